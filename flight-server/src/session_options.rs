//! The Flight session-option messages (`Flight.proto`: SetSessionOptions, GetSessionOptions,
//! CloseSession). arrow-flight 59 does not generate them, so they are declared here with the
//! field numbers of the protocol.

use std::collections::HashMap;

/// Action type: set session options.
pub const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
/// Action type: read session options.
pub const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
/// Action type: close the session.
pub const CLOSE_SESSION: &str = "CloseSession";

/// `SessionOptionValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionOptionValue {
    /// The value; none means "unset the option".
    #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<OptionValue>,
}

/// `SessionOptionValue.option_value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OptionValue {
    /// A string.
    #[prost(string, tag = "1")]
    StringValue(String),
    /// A boolean.
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    /// A 64-bit integer.
    #[prost(sfixed64, tag = "3")]
    Int64Value(i64),
    /// A double.
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    /// A list of strings.
    #[prost(message, tag = "5")]
    StringListValue(StringListValue),
}

/// `SessionOptionValue.StringListValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringListValue {
    /// The strings.
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// `SetSessionOptionsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsRequest {
    /// Options by name.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `SetSessionOptionsResult`: only the options that could not be set appear.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsResult {
    /// Errors by option name.
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionsError>,
}

/// `SetSessionOptionsResult.Error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSessionOptionsError {
    /// `ErrorValue`: 1 invalid name, 2 invalid value, 3 error.
    #[prost(int32, tag = "1")]
    pub value: i32,
}

/// `SetSessionOptionsResult.ErrorValue.INVALID_NAME`.
pub const ERROR_INVALID_NAME: i32 = 1;

/// `SetSessionOptionsResult.ErrorValue.INVALID_VALUE`.
pub const ERROR_INVALID_VALUE: i32 = 2;

/// `GetSessionOptionsResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetSessionOptionsResult {
    /// Options by name.
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

/// `CloseSessionResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseSessionResult {
    /// `Status`: 1 closed.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `CloseSessionResult.Status.CLOSED`.
pub const SESSION_CLOSED: i32 = 1;
