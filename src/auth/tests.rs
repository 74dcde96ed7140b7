//! Unit tests of BearerAuth and the token stores.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::body::{Body, collect_limited};
use crate::secret::ClientKey;

type Seen = Arc<Mutex<Vec<Request<()>>>>;

fn svc(
    store: Arc<MemoryTokenStore>,
) -> (
    impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
    Seen,
) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_arc(store))
        .service(service_fn(move |req: Request<Body>| {
            let s = s.clone();
            async move {
                let (parts, _) = req.into_parts();
                s.lock().unwrap().push(Request::from_parts(parts, ()));
                Ok::<_, Infallible>(Response::new(Body::from("ok")))
            }
        }));
    (svc, seen)
}

#[test]
fn tokens_that_mask_alike_get_distinct_ids() {
    let store = MemoryTokenStore::new();
    let a = store.insert("team-alpha-2024", "a", false);
    let b = store.insert("team-beta-2024", "b", false);
    let c = store.insert("team-gamma-2024", "c", false);
    // Ids come from the digest: distinct, plain ASCII, nothing of the token.
    for id in [&a, &b, &c] {
        assert!(
            id.starts_with("tok_") && id.len() == 16 && id.is_ascii(),
            "{id}"
        );
        assert!(!id.contains("team") && !id.contains("2024"), "{id}");
    }
    assert!(a != b && b != c && a != c);
    // Re-inserting a token keeps its id; each authenticates as itself.
    assert_eq!(store.insert("team-beta-2024", "b", false), b);
    assert_eq!(store.authenticate("team-alpha-2024").unwrap().id(), a);
    assert_eq!(store.authenticate("team-beta-2024").unwrap().id(), b);
    // Revoking by id removes that one token only.
    assert_eq!(store.remove(&b).len(), 1);
    assert!(store.authenticate("team-alpha-2024").is_some());
    assert!(store.authenticate("team-beta-2024").is_none());
    assert!(store.authenticate("team-gamma-2024").is_some());
}

fn store() -> Arc<MemoryTokenStore> {
    Arc::new(MemoryTokenStore::new().with_token("client-token-0001", "alice"))
}

fn req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn accepts_all_three_credential_styles_and_strips_them() {
    let (svc, seen) = svc(store());
    for r in [
        req(
            "/v1beta/models",
            &[("authorization", "Bearer client-token-0001")],
        ),
        req("/v1beta/models", &[("x-goog-api-key", "client-token-0001")]),
        req("/v1beta/models?alt=sse&key=client-token-0001", &[]),
    ] {
        let res = svc.clone().oneshot(r).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for r in seen.iter() {
        assert!(r.headers().get("authorization").is_none());
        assert!(r.headers().get("x-goog-api-key").is_none());
        assert!(!r.uri().to_string().contains("client-token"));
        assert_eq!(r.extensions().get::<Identity>().unwrap().name(), "alice");
    }
    assert_eq!(seen[2].uri().query(), Some("alt=sse"));
}

#[tokio::test]
async fn missing_token_is_401_in_the_route_dialect() {
    let (svc, seen) = svc(store());
    let res = svc
        .clone()
        .oneshot(req("/v1/chat/completions", &[]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let body = collect_limited(res.into_body(), 1 << 16).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");

    let res = svc.oneshot(req("/v1beta/models", &[])).await.unwrap();
    let body = collect_limited(res.into_body(), 1 << 16).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_token_is_401() {
    let (svc, seen) = svc(store());
    let res = svc
        .oneshot(req(
            "/v1beta/models",
            &[("authorization", "Bearer client-token-0002")],
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn revoked_token_is_refused_on_the_next_request() {
    let store = store();
    let (svc, _) = svc(store.clone());
    let ok = req("/v1beta/models", &[("x-goog-api-key", "client-token-0001")]);
    assert_eq!(
        svc.clone().oneshot(ok).await.unwrap().status(),
        StatusCode::OK
    );
    assert!(store.revoke(&crate::auth::TokenDigest::of("client-token-0001").id()));
    let again = req("/v1beta/models", &[("x-goog-api-key", "client-token-0001")]);
    assert_eq!(
        svc.oneshot(again).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn passthrough_takes_an_unknown_credential_as_the_clients_own_key() {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(BearerAuthLayer::from_arc(store()).client_key_passthrough(true))
        .service(service_fn(move |req: Request<Body>| {
            let s = s.clone();
            async move {
                let (parts, _) = req.into_parts();
                s.lock().unwrap().push(Request::from_parts(parts, ()));
                Ok::<_, Infallible>(Response::new(Body::from("ok")))
            }
        }));
    let own = "AIzaSyOwn-key-of-a-client-0000000000001";
    for r in [
        req(&format!("/v1beta/models?key={own}"), &[]),
        req(
            "/v1beta/models",
            &[("authorization", "Bearer client-token-0001")],
        ),
    ] {
        assert_eq!(
            svc.clone().oneshot(r).await.unwrap().status(),
            StatusCode::OK
        );
    }
    let res = svc.oneshot(req("/v1beta/models", &[])).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0]
            .extensions()
            .get::<ClientKey>()
            .unwrap()
            .key()
            .expose(),
        own
    );
    assert_eq!(
        seen[0].extensions().get::<Identity>().unwrap().id(),
        client_key_id(own)
    );
    assert!(!seen[0].uri().to_string().contains(own));
    // A known token is no client key: it uses the gateway's own keys.
    assert!(seen[1].extensions().get::<ClientKey>().is_none());
    assert_eq!(
        seen[1].extensions().get::<Identity>().unwrap().name(),
        "alice"
    );
}

#[test]
fn a_token_restored_from_its_digest_authenticates() {
    let s = MemoryTokenStore::new();
    s.insert_digest(
        TokenDigest::of("client-token-0009"),
        "clie…0009",
        "bob",
        false,
    );
    assert_eq!(s.authenticate("client-token-0009").unwrap().name(), "bob");
    assert!(s.authenticate("client-token-0008").is_none());
    let removed = s.remove("clie…0009");
    assert_eq!(removed[0].digest, TokenDigest::of("client-token-0009"));
    assert!(s.authenticate("client-token-0009").is_none());
}

#[test]
fn admin_flag_is_kept() {
    let s = MemoryTokenStore::new().with_admin_token("admin-token-123456");
    assert!(s.authenticate("admin-token-123456").unwrap().is_admin());
    assert!(s.authenticate("admin-token-12345").is_none());
}
