//! Certificates for a demo or a test server: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate for mutual TLS, all signed by that CA (rcgen). For
//! production, `[server.tls]` names certificates the operator's CA issued.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Selects rustls's aws-lc-rs provider for the process. The tree enables rustls with both
/// providers (object_store's and tonic's), and then rustls will not guess.
pub fn install_crypto_provider() {
    // Err: one is already installed, which is as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Where [`generate`] wrote its PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate clients trust (`ca.pem`).
    pub ca: PathBuf,
    /// The server's certificate and key (`server.pem`, `server.key`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate and key the CA signed, for mutual TLS (`client.pem`, `client.key`).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes a fresh CA, server and client certificate into `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "lakegate demo CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<_> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        vec!["lakegate-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(&files.cert, server_cert)?;
    write_private(&files.key, &server_key)?;
    std::fs::write(&files.client_cert, client_cert)?;
    write_private(&files.client_key, &client_key)?;
    Ok(files)
}

/// A key file only its owner may read.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())
}
