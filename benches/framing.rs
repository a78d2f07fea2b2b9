//! What following the request framing costs the connection wrapper per request: a GET
//! head (against the head scan the wrapper did before), a POST with a 1 KiB body read
//! with its head (kept, then replayed), a 64 KiB chunked body in 4 KiB chunks, read 16 KiB
//! at a time (validated), and the same 64 KiB as a Content-Length body (skipped).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use moat::conn::{Body, Framing, HeadScan};

const HEAD: &[u8] = b"GET /api/v1/users/42/orders?page=2 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\nAccept: application/json\r\nAccept-Encoding: gzip, br\r\nAccept-Language: en-GB,en;q=0.8\r\nAuthorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2lnbmF0dXJl\r\nConnection: keep-alive\r\n\r\n";

fn chunked_body() -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'x'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn framing(c: &mut Criterion) {
    c.bench_function("framing/head_scan_only (before)", |b| {
        b.iter(|| {
            let mut s = HeadScan::default();
            black_box(s.feed(black_box(HEAD)))
        })
    });
    c.bench_function("framing/get", |b| {
        b.iter(|| {
            let mut f = Framing::default();
            let _ = f.feed(black_box(HEAD));
            black_box(f.head_parsed(Body::Empty))
        })
    });
    let post = [HEAD, &[b'x'; 1024][..]].concat();
    c.bench_function("framing/post_1k_with_head", |b| {
        b.iter(|| {
            let mut f = Framing::default();
            let _ = f.feed(black_box(&post));
            black_box(f.head_parsed(Body::Length(1024)))
        })
    });
    // A connection's framing is reused request after request: the kept-bytes buffer too.
    let mut f = Framing::default();
    c.bench_function("framing/post_1k_with_head_reused_connection", |b| {
        b.iter(|| {
            let _ = f.feed(black_box(&post));
            black_box(f.head_parsed(Body::Length(1024)))
        })
    });
    let body = chunked_body();
    let mut g = c.benchmark_group("framing/body_64k");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chunked", |b| {
        b.iter(|| {
            let mut f = Framing::default();
            let _ = f.feed(HEAD);
            let _ = f.head_parsed(Body::Chunked);
            for read in body.chunks(16 * 1024) {
                let _ = f.feed(black_box(read));
            }
            black_box(f)
        })
    });
    g.bench_function("content_length", |b| {
        b.iter(|| {
            let mut f = Framing::default();
            let _ = f.feed(HEAD);
            let _ = f.head_parsed(Body::Length(body.len() as u64));
            for read in body.chunks(16 * 1024) {
                let _ = f.feed(black_box(read));
            }
            black_box(f)
        })
    });
    g.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
