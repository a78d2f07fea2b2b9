//! Mapping Pingora errors to the contract's error codes, in one place.

use crate::reply::ErrorCode;
use crate::upstream::pool::FailureKind;
use pingora_error::{Error, ErrorSource, ErrorType};

/// What to answer for a failed request; `None` when the client is gone and nothing can
/// be sent.
pub fn classify(e: &Error) -> Option<ErrorCode> {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(s) => return Some(ErrorCode::from_status(*s)),
        ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            return Some(ErrorCode::GatewayTimeout);
        }
        _ => {}
    }
    match e.esource() {
        ErrorSource::Upstream => Some(ErrorCode::BadGateway),
        ErrorSource::Downstream => match e.etype() {
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
            _ => Some(ErrorCode::BadRequest),
        },
        ErrorSource::Internal | ErrorSource::Unset => Some(ErrorCode::InternalError),
    }
}

/// How an upstream failure counts for outlier detection and metrics.
pub fn failure_kind(e: &Error) -> FailureKind {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => FailureKind::Timeout,
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | BindError | SocketError => {
            FailureKind::Connect
        }
        _ => FailureKind::Other,
    }
}

/// The client-facing message for an error code on upstream `name`. Never names internal
/// addresses.
pub fn message(code: ErrorCode, upstream: Option<&str>) -> String {
    let up = upstream.unwrap_or("upstream");
    match code {
        ErrorCode::GatewayTimeout => format!("upstream `{up}` timed out"),
        ErrorCode::BadGateway => format!("upstream `{up}` failed to answer"),
        ErrorCode::ServiceUnavailable => format!("no healthy target in upstream `{up}`"),
        ErrorCode::BadRequest => "malformed request".to_string(),
        ErrorCode::InternalError => "internal error".to_string(),
        other => other.as_str().to_ascii_lowercase().replace('_', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let e = Error::new_up(ErrorType::ConnectTimedout);
        assert_eq!(classify(&e), Some(ErrorCode::GatewayTimeout));
        assert_eq!(failure_kind(&e), FailureKind::Timeout);
        let e = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(classify(&e), Some(ErrorCode::BadGateway));
        assert_eq!(failure_kind(&e), FailureKind::Connect);
        let e = Error::new(ErrorType::HTTPStatus(503));
        assert_eq!(classify(&e), Some(ErrorCode::ServiceUnavailable));
        let e = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(classify(&e), None);
        let e = Error::new_down(ErrorType::InvalidHTTPHeader);
        assert_eq!(classify(&e), Some(ErrorCode::BadRequest));
        assert!(!message(ErrorCode::BadGateway, Some("users")).contains("127."));
    }
}
