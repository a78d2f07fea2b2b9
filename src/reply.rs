//! Responses moat makes itself: the contract's JSON error body and configured `respond`
//! bodies. Every error code and its status live here, in one place.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::ResponseHeader;

/// The contract's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    /// 415: the admin API's `POST` without `Content-Type: application/json` (an addition
    /// to the contract's list).
    UnsupportedMediaType,
    HeadersTooLarge,
    RateLimited,
    QuotaExceeded,
    ConcurrencyLimited,
    InternalError,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            PayloadTooLarge => 413,
            UriTooLong => 414,
            UnsupportedMediaType => 415,
            HeadersTooLarge => 431,
            RateLimited | QuotaExceeded | ConcurrencyLimited => 429,
            InternalError => 500,
            BadGateway => 502,
            ServiceUnavailable => 503,
            GatewayTimeout => 504,
        }
    }

    /// The code as it appears in the body.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "BAD_REQUEST",
            Unauthorized => "UNAUTHORIZED",
            Forbidden => "FORBIDDEN",
            NotFound => "NOT_FOUND",
            MethodNotAllowed => "METHOD_NOT_ALLOWED",
            RequestTimeout => "REQUEST_TIMEOUT",
            PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            UriTooLong => "URI_TOO_LONG",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            HeadersTooLarge => "HEADERS_TOO_LARGE",
            RateLimited => "RATE_LIMITED",
            QuotaExceeded => "QUOTA_EXCEEDED",
            ConcurrencyLimited => "CONCURRENCY_LIMITED",
            InternalError => "INTERNAL_ERROR",
            BadGateway => "BAD_GATEWAY",
            ServiceUnavailable => "SERVICE_UNAVAILABLE",
            GatewayTimeout => "GATEWAY_TIMEOUT",
        }
    }

    /// The code for a status moat has to answer with (used when Pingora reports one).
    pub fn from_status(status: u16) -> ErrorCode {
        use ErrorCode::*;
        match status {
            401 => Unauthorized,
            403 => Forbidden,
            404 => NotFound,
            405 => MethodNotAllowed,
            408 => RequestTimeout,
            413 => PayloadTooLarge,
            414 => UriTooLong,
            415 => UnsupportedMediaType,
            431 => HeadersTooLarge,
            429 => RateLimited,
            502 => BadGateway,
            503 => ServiceUnavailable,
            504 => GatewayTimeout,
            s if s >= 500 => InternalError,
            _ => BadRequest,
        }
    }
}

/// A response moat generates: status, extra headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The error code when this is an error reply (for logs and metrics).
    pub code: Option<ErrorCode>,
    /// The error message (never containing secrets), used to build the body.
    pub message: Option<String>,
    /// Extra headers (`Allow`, `WWW-Authenticate`, `Retry-After`, configured ones...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body; for errors it is built at send time, when the request id is known.
    pub body: Bytes,
}

impl Reply {
    /// An error reply with the contract's JSON body.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            status: code.status(),
            code: Some(code),
            message: Some(message.into()),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A plain reply with a body as given.
    pub fn raw(status: u16, headers: Vec<(HeaderName, HeaderValue)>, body: Bytes) -> Reply {
        Reply {
            status,
            code: None,
            message: None,
            headers,
            body,
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// Build the response head and body; error bodies get `request_id` and a timestamp.
    pub fn build(&self, request_id: &str) -> pingora_error::Result<(ResponseHeader, Bytes)> {
        let body = match (self.code, &self.message) {
            (Some(code), Some(msg)) => Bytes::from(error_body(code, msg, request_id)),
            _ => self.body.clone(),
        };
        // Room for Content-Type, Content-Length and the X-Request-ID the response phase adds.
        let mut resp = ResponseHeader::build(self.status, Some(self.headers.len() + 3))?;
        if self.code.is_some() {
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        }
        for (k, v) in &self.headers {
            resp.append_header(k.clone(), v.clone())?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        Ok((resp, body))
    }
}

/// The contract's error body.
pub fn error_body(code: ErrorCode, message: &str, request_id: &str) -> String {
    let body = serde_json::json!({
        "error": {
            "code": code.as_str(),
            "message": message,
            "request_id": request_id,
            "timestamp": crate::util::time::rfc3339_now(),
        }
    });
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let r = Reply::error(ErrorCode::NotFound, "no route for GET /x");
        let (head, body) = r.build("01ABC").unwrap();
        assert_eq!(head.status.as_u16(), 404);
        assert_eq!(head.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "NOT_FOUND");
        assert_eq!(v["error"]["message"], "no route for GET /x");
        assert_eq!(v["error"]["request_id"], "01ABC");
        assert!(v["error"]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(head.headers["content-length"], body.len().to_string());
    }

    #[test]
    fn statuses() {
        for (c, s) in [
            (ErrorCode::RateLimited, 429),
            (ErrorCode::QuotaExceeded, 429),
            (ErrorCode::HeadersTooLarge, 431),
            (ErrorCode::UnsupportedMediaType, 415),
            (ErrorCode::GatewayTimeout, 504),
        ] {
            assert_eq!(c.status(), s);
            assert_eq!(ErrorCode::from_status(s).status(), s);
        }
    }
}
