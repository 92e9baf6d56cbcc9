//! Flight SQL session options: the scenario a session works under.

use super::*;

/// The most options one SetSessionOptions may name.
const MAX_SESSION_OPTIONS: usize = 16;

impl LakegateService {
    pub(super) fn set_session_options(
        &self,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let request = so::SetSessionOptionsRequest::decode(body)
            .map_err(|e| Status::invalid_argument(format!("bad SetSessionOptionsRequest: {e}")))?;
        // A session has two options: a million unknown names took 3.4 s to answer (round 29).
        if request.session_options.len() > MAX_SESSION_OPTIONS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_SESSION_OPTIONS} session options are set at once (lakegate has \
                 `{SCENARIO_OPTION}` and `{CATALOG_OPTION}`)"
            )));
        }
        let mut result = so::SetSessionOptionsResult::default();
        for (name, value) in request.session_options {
            if name == CATALOG_OPTION {
                // One catalog: choosing it changes nothing, choosing another is refused.
                let lake = matches!(&value.option_value,
                    Some(OptionValue::StringValue(s)) if s == catalog::LAKE_CATALOG);
                if !lake {
                    result.errors.insert(
                        name,
                        so::SetSessionOptionsError {
                            value: so::ERROR_INVALID_VALUE,
                        },
                    );
                }
                continue;
            }
            if name != SCENARIO_OPTION {
                result.errors.insert(
                    name,
                    so::SetSessionOptionsError {
                        value: so::ERROR_INVALID_NAME,
                    },
                );
                continue;
            }
            let scenario = match value.option_value {
                None => None,
                Some(OptionValue::StringValue(s)) if s.is_empty() => None,
                Some(OptionValue::StringValue(s)) => {
                    self.gateway
                        .check_scenario_for(&caller.principal.user, &s)
                        .map_err(to_status)?;
                    Some(s)
                }
                Some(_) => return Err(Status::invalid_argument(
                    "the session option `scenario` takes a string: the id of an approved scenario",
                )),
            };
            self.sessions
                .set_scenario(&caller.token, scenario)
                .map_err(auth_status)?;
        }
        Ok(action_result(result.encode_to_vec()))
    }

    pub(super) fn get_session_options(
        &self,
        caller: &Caller,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let session = self.sessions.resolve(&caller.token).map_err(auth_status)?;
        let mut result = so::GetSessionOptionsResult::default();
        result.session_options.insert(
            CATALOG_OPTION.to_string(),
            SessionOptionValue {
                option_value: Some(OptionValue::StringValue(catalog::LAKE_CATALOG.into())),
            },
        );
        if let Some(s) = session.scenario {
            result.session_options.insert(
                SCENARIO_OPTION.to_string(),
                SessionOptionValue {
                    option_value: Some(OptionValue::StringValue(s)),
                },
            );
        }
        Ok(action_result(result.encode_to_vec()))
    }
}
