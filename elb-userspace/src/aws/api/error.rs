//! An API error with AWS's code and HTTP status (botocore's `elb` service
//! model names them), written as the Query API's `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
        }
    }

    /// `ValidationError` (400): a bad or missing parameter.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationError", 400, message)
    }

    /// `LoadBalancerNotFound` (400), botocore's `AccessPointNotFoundException`.
    pub fn lb_not_found(name: &str) -> Self {
        Self::new(
            "LoadBalancerNotFound",
            400,
            format!("There is no ACTIVE Load Balancer named '{name}'"),
        )
    }

    /// `InvalidConfigurationRequest` (409).
    pub fn invalid_configuration(message: impl Into<String>) -> Self {
        Self::new("InvalidConfigurationRequest", 409, message)
    }

    /// `InvalidInstance` (400), botocore's `InvalidEndPointException`.
    pub fn invalid_instance(message: impl Into<String>) -> Self {
        Self::new("InvalidInstance", 400, message)
    }

    /// elb could not do what was asked (store or EC2 unreachable).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("InternalFailure", 500, message)
    }

    /// `Sender` for 4xx, `Receiver` for 5xx, as AWS types them.
    pub fn fault(&self) -> &'static str {
        if self.status >= 500 {
            "Receiver"
        } else {
            "Sender"
        }
    }
}
