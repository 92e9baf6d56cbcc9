//! The secure scan crosses the wire (as it will to Ballista executors): encoded with its codec,
//! decoded in a "remote" context that re-plans the Delta scan, it returns exactly what it returns
//! locally — rows filtered and columns masked — and the encoding holds no mask key.

use datafusion::physical_plan::collect;
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};

use gateway::{Gateway, Principal, SecureScanCodec};
use lakegate_tests::{pretty, shared_demo};

#[tokio::test]
async fn the_secure_scan_round_trips_through_its_codec() {
    let mut config = lake_config::Config::load(&shared_demo().join("lakegate.toml")).unwrap();
    let key = "codec-test-mask-key";
    config.policy.mask_key = Some(key.into());
    let gateway = Gateway::open(&config).await.unwrap();
    for (user, scenario, sql) in [
        (
            "officer",
            "district-services",
            "SELECT visit_id, upper(patient_id), district FROM health.visits WHERE hospital = 'Haidian Hospital' ORDER BY visit_id",
        ),
        (
            "banker",
            "bank-credit",
            "SELECT district, count(*) AS n FROM market.penalties WHERE amount > 100 GROUP BY district ORDER BY district",
        ),
        (
            "insurer",
            "insurance-underwriting",
            "SELECT diagnosis, count(*) AS n FROM health.visits GROUP BY diagnosis ORDER BY diagnosis",
        ),
    ] {
        let who = Principal {
            user: user.into(),
            scenario: Some(scenario.into()),
        };
        let query = gateway.prepare(&who, sql).await.unwrap();
        let plan = query.physical_plan().await.unwrap();
        let local = pretty(&collect(plan.clone(), query.task_context()).await.unwrap());
        assert!(!local.is_empty());

        let sender = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
        let bytes = physical_plan_to_bytes_with_extension_codec(plan, &sender).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("SecureScan") || text.contains("health") || text.contains("market"));
        assert!(!text.contains(key), "the mask key travelled with the plan");

        // The executor brings its own key and storage options.
        let executor = SecureScanCodec::new(Some(key.as_bytes()), Default::default());
        let ctx = query.task_context();
        let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx, &executor).unwrap();
        let remote = pretty(&collect(decoded, ctx).await.unwrap());
        assert_eq!(remote, local, "{sql}");
    }
}
