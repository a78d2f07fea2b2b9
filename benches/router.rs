//! Route lookup cost with 10 and 10,000 host+prefix routes (it must not grow linearly),
//! plus header-template rendering (as is, and escaped for a JSON body).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use moat::router::{PathMatch, RouteSpec, Router};

fn table(n: usize) -> Router {
    let specs = (0..n)
        .map(|i| RouteSpec {
            hosts: vec![format!("svc{}.example.com", i % 100)],
            path: PathMatch::Prefix(format!("/api/v1/service{i}")),
            methods: vec![Method::GET, Method::POST],
            headers: vec![],
            priority: 0,
        })
        .collect();
    Router::new(specs)
}

fn lookups(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [10usize, 10_000] {
        let r = table(n);
        let last = n - 1;
        let host = format!("svc{}.example.com", last % 100);
        let path = format!("/api/v1/service{last}/users/42/orders");
        c.bench_function(&format!("route_lookup/{n}_routes"), |b| {
            b.iter(|| {
                black_box(r.lookup(black_box(&host), black_box(&path), &Method::GET, &headers))
            })
        });
        c.bench_function(&format!("route_miss/{n}_routes"), |b| {
            b.iter(|| {
                black_box(r.lookup(
                    black_box("nohost.example.com"),
                    black_box("/nothing/here"),
                    &Method::GET,
                    &headers,
                ))
            })
        });
    }
}

fn templates(c: &mut Criterion) {
    use moat::template::{Facts, Template};
    let t =
        Template::parse("{{client_ip}}|{{route}}|{{header.user-agent}}|{{request_id}}").unwrap();
    let mut req = pingora_http::RequestHeader::build("GET", b"/a/b?c=d", None).unwrap();
    req.insert_header("user-agent", "bench/1.0").unwrap();
    let facts = Facts {
        req: &req,
        client_ip: Some("203.0.113.9".parse().unwrap()),
        request_id: "01JD0000000000000000000000",
        route: "users",
        identity: None,
    };
    let mut buf = Vec::with_capacity(128);
    c.bench_function("template_render", |b| {
        b.iter(|| {
            buf.clear();
            t.render(black_box(&facts), &mut buf);
            black_box(buf.len())
        })
    });
    // The same values escaped as JSON string fragments (a JSON `respond` body).
    c.bench_function("template_render_json", |b| {
        b.iter(|| {
            buf.clear();
            t.render_in(black_box(&facts), &mut buf, moat::template::Context::Json);
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, lookups, templates);
criterion_main!(benches);
