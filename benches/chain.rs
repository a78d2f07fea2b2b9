//! The per-request pieces of the policy chain that issue 7 rewrote: request ids, and
//! adding headers to a response head — through Pingora's case-keeping `insert_header`
//! (the old path) against moat's response phase on a moved-out head (`util::head`), and
//! the same two ways for the request id alone; and the access log's timestamp, from the
//! per-thread cache of the current second against `jiff` formatting every time.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue};
use moat::util::head::edit_response;
use moat::util::{id, time};
use pingora_http::ResponseHeader;
use std::fmt::Write as _;
use std::time::SystemTime;

/// A response head as Pingora parses one from an upstream: case map on, sized to it.
fn upstream_head() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, Some(3)).expect("head");
    for (k, v) in [
        ("Content-Type", "text/plain"),
        ("Content-Length", "2"),
        ("Server", "up"),
    ] {
        r.append_header(k, v).expect("header");
    }
    r
}

static NAMES: [HeaderName; 6] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
    HeaderName::from_static("cache-control"),
    HeaderName::from_static("x-served-by"),
];
const STR_NAMES: [&str; 6] = [
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "cache-control",
    "x-served-by",
];

fn ids(c: &mut Criterion) {
    c.bench_function("id/ulid_value", |b| b.iter(|| black_box(id::ulid_value())));
    c.bench_function("id/traceparent", |b| {
        b.iter(|| black_box(id::new_traceparent()))
    });
}

fn timestamps(c: &mut Criterion) {
    c.bench_function("time/access_log_ts/cached_second", |b| {
        let mut out = String::with_capacity(32);
        b.iter(|| {
            out.clear();
            time::push_rfc3339_millis(&mut out, black_box(SystemTime::now()));
            black_box(out.len())
        })
    });
    c.bench_function("time/access_log_ts/jiff_each_time", |b| {
        let mut out = String::with_capacity(32);
        b.iter(|| {
            out.clear();
            let t = jiff::Timestamp::try_from(black_box(SystemTime::now())).expect("time");
            let _ = write!(out, "{t:.3}");
            black_box(out.len())
        })
    });
}

fn response_headers(c: &mut Criterion) {
    let v = HeaderValue::from_static("01JDZ8Q3V5W6X7Y8Z9A0B1C2D3");
    c.bench_function("response_head/6_headers/pingora_insert_header", |b| {
        b.iter_batched(
            upstream_head,
            |mut r| {
                for n in STR_NAMES {
                    let _ = r.insert_header(n, v.clone());
                }
                r.remove_header("server");
                black_box(r)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("response_head/6_headers/edit_response", |b| {
        b.iter_batched(
            upstream_head,
            |mut r| {
                edit_response(&mut r, |h| {
                    for n in &NAMES {
                        h.headers.insert(n.clone(), v.clone());
                    }
                    h.headers.remove(http::header::SERVER);
                });
                black_box(r)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The one header every response gets on a route without response plugins (issue 12:
/// `X-Request-ID` everywhere): Pingora's `insert_header`, which keeps the upstream's header
/// case (what moat does), against moving the head out for it.
fn request_id_only(c: &mut Criterion) {
    let v = id::ulid_value();
    c.bench_function("response_head/request_id_only/pingora_insert_header", |b| {
        b.iter_batched(
            upstream_head,
            |mut r| {
                let _ = r.insert_header("X-Request-ID", v.clone());
                black_box(r)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("response_head/request_id_only/edit_response", |b| {
        b.iter_batched(
            upstream_head,
            |mut r| {
                edit_response(&mut r, |h| {
                    h.headers.insert(id::X_REQUEST_ID, v.clone());
                });
                black_box(r)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, ids, timestamps, response_headers, request_id_only);
criterion_main!(benches);
