#![allow(clippy::unwrap_used)]
//! The operators' API: each route asks every service (or the one named)
//! and merges their answers by key, each item naming its service; a dead
//! letter is found wherever it is; a stream in several logs is a 409; a
//! service that fails fails the answer.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

fn ids(answer: &Answer, field: &str) -> Vec<String> {
    let items = answer.body.as_array().unwrap_or_else(|| panic!("not a list: {}", answer.body));
    items
        .iter()
        .map(|item| format!("{}:{}", item["service"].as_str().unwrap(), item[field].as_str().unwrap()))
        .collect()
}

/// The calls the fakes received whose target starts with `prefix`.
fn calls(fakes: &Fakes, prefix: &str) -> Vec<String> {
    fakes.recorder.calls().into_iter().filter(|call| call.contains(prefix)).collect()
}

#[tokio::test]
async fn dead_letters_of_every_service_merge_by_id() {
    let fakes = Fakes::default();
    let app = app(fakes.upstreams());
    let all = get(&app, "/api/admin/dead-letters").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(
        ids(&all, "id"),
        [format!("payment:{LETTER_1}"), format!("inventory:{LETTER_2}"), format!("payment:{LETTER_3}")]
    );
    assert_eq!(all.body[0]["message"]["type"], "x.do.v1");
    // Every service was asked for the same page.
    assert_eq!(calls(&fakes, "/admin/dead-letters").len(), contracts::Service::BUSINESS.len());

    let first = get(&app, "/api/admin/dead-letters?limit=2").await;
    assert_eq!(ids(&first, "id"), [format!("payment:{LETTER_1}"), format!("inventory:{LETTER_2}")]);
    let rest = get(&app, &format!("/api/admin/dead-letters?limit=2&after={LETTER_2}")).await;
    assert_eq!(ids(&rest, "id"), [format!("payment:{LETTER_3}")]);

    fakes.recorder.clear();
    let payment = get(&app, "/api/admin/dead-letters?service=payment").await;
    assert_eq!(ids(&payment, "id"), [format!("payment:{LETTER_1}"), format!("payment:{LETTER_3}")]);
    assert_eq!(calls(&fakes, "/admin/dead-letters"), ["payment GET /admin/dead-letters?limit=1000"]);

    for (query, field) in
        [("service=gateway", "service"), ("service=billing", "service"), ("limit=0", "limit"), ("after=x", "after")]
    {
        assert_eq!(get(&app, &format!("/api/admin/dead-letters?{query}")).await.fields(), [field], "{query}");
    }
    let unknown = get(&app, "/api/admin/dead-letters?sort=id").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_dead_letter_is_shown_replayed_or_discarded_where_it_is() {
    let fakes = Fakes::default();
    let app = app(fakes.upstreams());
    let shown = get(&app, &format!("/api/admin/dead-letters/{LETTER_2}")).await;
    assert_eq!((shown.status, &shown.body["service"]), (StatusCode::OK, &json!("inventory")), "{}", shown.body);
    let unknown = "0190a4b2-7d5e-7c3a-9f1e-d000000000ff";
    let missing = get(&app, &format!("/api/admin/dead-letters/{unknown}")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    assert_eq!(get(&app, "/api/admin/dead-letters/nope").await.status, StatusCode::BAD_REQUEST);

    fakes.recorder.clear();
    let replayed = send(&app, Method::POST, &format!("/api/admin/dead-letters/{LETTER_1}/replay"), None, &[]).await;
    assert_eq!(replayed.status, StatusCode::OK, "{}", replayed.body);
    assert_eq!(
        replayed.body,
        json!({ "service": "payment", "id": LETTER_1, "action": "replayed", "parked_failed": null })
    );
    // Found by asking everyone, then replayed where it is, only there.
    assert_eq!(calls(&fakes, "POST"), [format!("payment POST /admin/dead-letters/{LETTER_1}/replay")]);

    // The service's own refusal, passed through.
    let failed = send(&app, Method::POST, &format!("/api/admin/dead-letters/{LETTER_3}/replay"), None, &[]).await;
    assert_eq!(failed.status, StatusCode::CONFLICT);
    assert_eq!(failed.problem_type(), "https://polis.dev/problems/replay-failed");
    let discarded = send(&app, Method::POST, &format!("/api/admin/dead-letters/{LETTER_3}/discard"), None, &[]).await;
    assert_eq!((discarded.status, &discarded.body["action"]), (StatusCode::OK, &json!("discarded")));
    let nothing = send(&app, Method::POST, &format!("/api/admin/dead-letters/{unknown}/discard"), None, &[]).await;
    assert_eq!(nothing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sagas_merge_by_service_type_and_id_and_page_across_services() {
    let fakes = Fakes::default();
    let app = app(fakes.upstreams());
    let all = get(&app, "/api/admin/sagas").await;
    assert_eq!(ids(&all, "saga_id"), ["order:a", "order:b", "order:c", "payment:z"]);

    // The cursor names the service: those before it are not asked, its own is asked after the key.
    fakes.recorder.clear();
    let page = get(&app, "/api/admin/sagas?limit=2&after=order:create-order:b").await;
    assert_eq!(ids(&page, "saga_id"), ["order:c", "payment:z"]);
    let asked = calls(&fakes, "/admin/sagas");
    assert_eq!(
        asked,
        [
            "order GET /admin/sagas?limit=2&after=create-order%3Ab",
            "order-history GET /admin/sagas?limit=2",
            "payment GET /admin/sagas?limit=2",
            "shipping GET /admin/sagas?limit=2",
        ]
    );
    let percent_encoded = get(&app, "/api/admin/sagas?limit=2&after=order%3Acreate-order%3Ab").await;
    assert_eq!(ids(&percent_encoded, "saga_id"), ["order:c", "payment:z"]);
    let past = get(&app, "/api/admin/sagas?after=zzz:t:x").await;
    assert_eq!(past.body, json!([]));

    let authorizing = get(&app, "/api/admin/sagas?state=authorizing&service=order").await;
    assert_eq!(ids(&authorizing, "saga_id"), ["order:b", "order:c"]);

    let in_flight = get(&app, "/api/admin/sagas/in-flight").await;
    let counted: Vec<Value> =
        in_flight.body.as_array().unwrap().iter().map(|c| json!([c["service"], c["state"], c["count"]])).collect();
    assert_eq!(
        counted,
        [json!(["order", "authorizing", 1]), json!(["order", "authorizing", 1]), json!(["payment", "asking", 1])]
    );

    for (query, field) in [
        ("after=order:create-order", "after"),
        ("after=create-order:b", "after"),
        ("state=a%20b", "state"),
        ("finished=maybe", "finished"),
        ("service=gateway", "service"),
    ] {
        assert_eq!(get(&app, &format!("/api/admin/sagas?{query}")).await.fields(), [field], "{query}");
    }
    assert_eq!(get(&app, "/api/admin/sagas/in-flight?state=x").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_stream_is_read_from_the_log_that_holds_it() {
    let fakes = Fakes::default();
    let app = app(fakes.upstreams());
    let order = get(&app, "/api/admin/events/order-1?after=1").await;
    assert_eq!(order.status, StatusCode::OK, "{}", order.body);
    let versions: Vec<(Value, Value)> =
        order.body.as_array().unwrap().iter().map(|e| (e["service"].clone(), e["version"].clone())).collect();
    assert_eq!(versions, [(json!("order"), json!(2)), (json!("order"), json!(3))]);

    // In two logs: say which.
    let ambiguous = get(&app, "/api/admin/events/customer%2F1").await;
    assert_eq!(ambiguous.status, StatusCode::CONFLICT, "{}", ambiguous.body);
    assert_eq!(ambiguous.body["services"], json!(["payment", "shipping"]));
    let shipping = get(&app, "/api/admin/events/customer%2F1?service=shipping&limit=1").await;
    assert_eq!(shipping.body.as_array().unwrap().len(), 1);
    assert_eq!(shipping.body[0]["service"], "shipping");

    assert_eq!(get(&app, "/api/admin/events/nothing").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/api/admin/events/order-1?service=payment").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/api/admin/events/order-1?after=-1").await.fields(), ["after"]);
}

#[tokio::test]
async fn a_failing_service_fails_the_answer_and_is_named() {
    let fakes = Fakes::default();
    let mut upstreams = fakes.upstreams();
    upstreams.set(Service::Shipping, gateway::Upstream::local(failing()));
    let app = app(upstreams);
    let answer = get(&app, "/api/admin/dead-letters").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert!(answer.body["detail"].as_str().unwrap().contains("shipping"), "{}", answer.body);
    // The others can still be read one at a time.
    assert_eq!(get(&app, "/api/admin/dead-letters?service=payment").await.status, StatusCode::OK);
    // A letter found elsewhere is found all the same; one found nowhere cannot be called missing.
    assert_eq!(get(&app, &format!("/api/admin/dead-letters/{LETTER_1}")).await.status, StatusCode::OK);
    let unknown = get(&app, "/api/admin/dead-letters/0190a4b2-7d5e-7c3a-9f1e-d000000000ff").await;
    assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
}
