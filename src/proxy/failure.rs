//! Mapping Pingora errors to the contract's error codes, in one place.

use crate::reply::ErrorCode;
use crate::upstream::pool::FailureKind;
use pingora_error::{Error, ErrorSource, ErrorType};

/// What to answer for a failed request; `None` when the client is gone and nothing can
/// be sent.
pub fn classify(e: &Error) -> Option<ErrorCode> {
    use ErrorType::*;
    if malformed_body(e).is_some() {
        return Some(ErrorCode::BadRequest);
    }
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

/// The malformed chunked request body `e` comes from (a client read failed by the
/// connection's framing check), if it does: answered `400` when nothing was sent yet, and
/// the connection is never kept.
pub fn malformed_body(e: &Error) -> Option<crate::conn::Malformed> {
    if e.esource() != &ErrorSource::Downstream {
        return None;
    }
    crate::conn::Malformed::found_in(e.root_cause())
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

    #[test]
    fn malformed_chunked_body_is_a_bad_request() {
        let bad = crate::conn::Malformed("chunk size missing");
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, bad);
        let read = Error::because(ErrorType::ReadError, "reading body", io);
        // As Pingora wraps it again on the way up.
        let e = Error::because(ErrorType::ReadError, "proxying", read).into_down();
        assert_eq!(malformed_body(&e), Some(bad));
        assert_eq!(classify(&e), Some(ErrorCode::BadRequest));
        // Other read errors are the client going away.
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, "tls");
        let e = Error::because(ErrorType::ReadError, "reading body", other).into_down();
        assert_eq!(malformed_body(&e), None);
        assert_eq!(classify(&e), None);
    }
}
