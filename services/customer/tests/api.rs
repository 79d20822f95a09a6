#![allow(clippy::unwrap_used)]
//! The customer service end to end through its router (behind polis's
//! standard layers), with the events it leaves in its outbox: one suite,
//! run on SQLite and on PostgreSQL.

use polis_runtime::Service as _;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use contracts::customer::{Customer as CustomerBody, CustomerRegistered, CustomerUpdated};
use customer::{Config, Customer, SERVICE};
use polis_bus::ConsumerOptions;
use polis_core::Message;
use polis_runtime::Page;
use polis_store::sql::{Sql, SqlStore};
use serde_json::{Value, json};
use testsupport::{Answer, hosted, outbox};
use uuid::Uuid;

/// A customer service on a fresh store, with its router as a host serves it.
struct App<S> {
    service: Customer<S>,
    router: Router,
    store: Arc<S>,
}

impl<S> App<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    async fn new(store: Arc<S>) -> Self {
        let service = Customer::open(store.clone(), Config::default()).await.unwrap();
        let router = hosted(service.router());
        Self { service, router, store }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Answer {
        testsupport::call(&self.router, method, uri, body).await
    }

    async fn register(&self, body: Value) -> Answer {
        self.call(Method::POST, "/customers", Some(body)).await
    }

    /// Every message in the outbox (the tests run no relay, so nothing leaves).
    async fn outbox(&self) -> Vec<Message> {
        outbox(&*self.store).await
    }
}

fn ada() -> Value {
    json!({
        "name": "Ada Lovelace",
        "email": "Ada@Example.com",
        "address": { "line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH", "country": "GB" },
        "credit_limit": 250_000,
    })
}

fn with(mut body: Value, pointer: &str, value: Value) -> Value {
    *body.pointer_mut(pointer).unwrap() = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().unwrap().remove(field);
    body
}

async fn registering_publishes_the_full_customer<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let created = app.register(ada()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let customer = created.json::<CustomerBody>();
    assert_eq!(customer.id.get_version_num(), 7);
    assert_eq!((customer.name.as_str(), customer.email.as_str()), ("Ada Lovelace", "Ada@Example.com"));
    assert_eq!(customer.address.country, "GB");
    assert_eq!(customer.credit_limit, 250_000);
    let location = created.headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/customers/{}", customer.id));

    let fetched = app.call(Method::GET, &location, None).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json::<CustomerBody>(), customer);

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    let event = &outbox[0];
    assert!(event.is::<CustomerRegistered>());
    assert_eq!((event.source.as_str(), event.key.clone()), (SERVICE, customer.id.to_string()));
    assert_eq!(event.decode::<CustomerRegistered>().unwrap().customer, customer);
}

async fn the_admin_list_has_everyone_in_registration_order<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let empty = app.call(Method::GET, "/customers", None).await;
    assert_eq!((empty.status, empty.body), (StatusCode::OK, json!([])));
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = app.register(with(ada(), "/email", json!(format!("c{i}@example.com")))).await;
        ids.push(created.json::<CustomerBody>().id);
    }
    let listed = app.call(Method::GET, "/customers", None).await;
    let listed: Vec<CustomerBody> = serde_json::from_value(listed.body).unwrap();
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    assert_eq!(app.service.list(&Page::first(100)).await.unwrap(), listed);

    // Page by page: two, two, then the last one.
    let app = &app;
    let page = |query: String| async move {
        let answer = app.call(Method::GET, &format!("/customers?{query}"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json::<Vec<CustomerBody>>().into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(page("limit=2".into()).await, ids[..2]);
    assert_eq!(page(format!("limit=2&after={}", ids[1])).await, ids[2..4]);
    assert_eq!(page(format!("limit=2&after={}", ids[3])).await, ids[4..]);
    for (query, field) in [("limit=0", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"), ("after=nope", "after")]
    {
        let answer = app.call(Method::GET, &format!("/customers?{query}"), None).await;
        assert!(answer.is_problem(), "{query}");
        assert_eq!(answer.fields(), [field], "{query}");
    }
}

async fn every_invalid_field_is_named<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let cases = [
        (with(ada(), "/name", json!("")), vec!["name"]),
        (with(ada(), "/name", json!("   ")), vec!["name"]),
        (with(ada(), "/name", json!("x".repeat(201))), vec!["name"]),
        // PostgreSQL refuses NUL in text: it must be a 422, not a failed insert.
        (with(ada(), "/name", json!("Ada\u{0}")), vec!["name"]),
        // Text people read hides nothing: no bidi controls, no zero-width characters.
        (with(ada(), "/name", json!("Ada\u{202E}ecalevoL")), vec!["name"]),
        (with(ada(), "/name", json!("A\u{200B}da")), vec!["name"]),
        (with(ada(), "/name", json!("\u{FEFF}Ada")), vec!["name"]),
        (with(ada(), "/name", json!("Ada\u{061C}")), vec!["name"]),
        (with(ada(), "/address/line1", json!("1 Main St\u{2066}")), vec!["address.line1"]),
        (with(ada(), "/address/city", json!("Lon\u{200D}don")), vec!["address.city"]),
        (with(ada(), "/address/postal_code", json!("SW1Y\u{200E}")), vec!["address.postal_code"]),
        (with(ada(), "/email", json!("ada\u{202D}@example.com")), vec!["email"]),
        (with(ada(), "/email", json!("ada.example.com")), vec!["email"]),
        (with(ada(), "/email", json!("ada@localhost")), vec!["email"]),
        (with(ada(), "/address/country", json!("gb")), vec!["address.country"]),
        (with(ada(), "/address/country", json!("GBR")), vec!["address.country"]),
        (with(ada(), "/address/line1", json!("")), vec!["address.line1"]),
        (with(ada(), "/address/city", json!(" ")), vec!["address.city"]),
        (with(ada(), "/address/postal_code", json!("")), vec!["address.postal_code"]),
        (with(ada(), "/credit_limit", json!(-1)), vec!["credit_limit"]),
        // Shape errors come from the JSON extractor, with the same field naming.
        (with(ada(), "/credit_limit", json!(1.5)), vec!["credit_limit"]),
        (without(ada(), "email"), vec!["email"]),
        (with(ada(), "/address", json!({ "line1": "x", "city": "y", "postal_code": "z" })), vec!["address.country"]),
        (with(with(ada(), "/name", json!("")), "/credit_limit", json!(-5)), vec!["name", "credit_limit"]),
    ];
    for (body, fields) in cases {
        let answer = app.register(body.clone()).await;
        assert_eq!(answer.fields(), fields, "{body}");
        assert!(answer.is_problem());
    }
    let list = app.call(Method::GET, "/customers", None).await;
    assert_eq!(list.body, json!([]));
    assert!(app.outbox().await.is_empty());
}

async fn a_taken_email_is_a_conflict_whatever_its_case<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    assert_eq!(app.register(ada()).await.status, StatusCode::CREATED);
    let again = app.register(with(ada(), "/email", json!("  ada@EXAMPLE.COM "))).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.is_problem());
    assert_eq!(again.body["field"], "email");
    assert_eq!(app.outbox().await.len(), 1);
}

async fn concurrent_registrations_of_one_email_admit_one<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.register(with(ada(), "/name", json!(format!("Ada {i}")))).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 7, "{statuses:?}");
    assert_eq!(app.outbox().await.len(), 1);
}

/// An unknown id is a 404; a path that is no id at all (not a UUID, or one
/// in another spelling than the canonical hyphenated form) a 400 naming
/// the parameter: nothing was looked up.
async fn unknown_ids_are_not_found_and_malformed_ones_bad_requests<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let id = Uuid::now_v7();
    let unknown = format!("/customers/{id}");
    for method in [Method::GET, Method::PUT] {
        let body = (method == Method::PUT).then(|| json!({ "credit_limit": 1 }));
        let got = app.call(method.clone(), &unknown, body.clone()).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{method}");
        assert!(got.is_problem());
        for malformed in
            ["not-a-uuid".to_owned(), format!("urn:uuid:{id}"), format!("%7B{id}%7D"), id.simple().to_string()]
        {
            let got = app.call(method.clone(), &format!("/customers/{malformed}"), body.clone()).await;
            assert_eq!(got.status, StatusCode::BAD_REQUEST, "{method} {malformed}: {}", got.body);
            assert!(got.is_problem(), "{malformed}");
            assert_eq!(got.body["errors"][0]["field"], "id", "{}", got.body);
        }
        let garbled = app.call(method.clone(), "/customers/%FF", body).await;
        assert_eq!(garbled.status, StatusCode::BAD_REQUEST);
        assert!(garbled.is_problem());
    }
    // Hex digits in either case name the same customer.
    let ada = app.register(ada()).await.json::<CustomerBody>();
    let upper = app.call(Method::GET, &format!("/customers/{}", ada.id.to_string().to_uppercase()), None).await;
    assert_eq!(upper.json::<CustomerBody>(), ada);
    assert_eq!(app.outbox().await.len(), 1);
}

async fn an_update_changes_what_it_names_and_publishes_the_new_state<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let ada = app.register(ada()).await.json::<CustomerBody>();
    let uri = format!("/customers/{}", ada.id);

    let raised = app.call(Method::PUT, &uri, Some(json!({ "credit_limit": 500_000 }))).await;
    assert_eq!(raised.status, StatusCode::OK, "{}", raised.body);
    let raised = raised.json::<CustomerBody>();
    assert_eq!(raised, CustomerBody { credit_limit: 500_000, ..ada.clone() });
    assert_eq!(app.call(Method::GET, &uri, None).await.json::<CustomerBody>(), raised);

    let moved = json!({ "line1": "1 Rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR" });
    let moved = app
        .call(Method::PUT, &uri, Some(json!({ "name": " Ada King ", "address": moved })))
        .await
        .json::<CustomerBody>();
    assert_eq!((moved.name.as_str(), moved.address.city.as_str()), ("Ada King", "Paris"));
    assert_eq!(moved.credit_limit, 500_000);

    // Nothing changes: nothing is announced.
    let same = app.call(Method::PUT, &uri, Some(json!({ "credit_limit": 500_000 }))).await;
    assert_eq!((same.status, same.json::<CustomerBody>()), (StatusCode::OK, moved.clone()));
    let empty = app.call(Method::PUT, &uri, Some(json!({}))).await;
    assert_eq!((empty.status, empty.json::<CustomerBody>()), (StatusCode::OK, moved.clone()));

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 3);
    assert!(outbox.iter().all(|m| m.key == ada.id.to_string()));
    let updates: Vec<_> = outbox[1..].iter().map(|m| m.decode::<CustomerUpdated>().unwrap().customer).collect();
    assert!(outbox[1..].iter().all(Message::is::<CustomerUpdated>));
    assert_eq!(updates, [raised, moved.clone()]);

    let invalid = app.call(Method::PUT, &uri, Some(json!({ "email": "nope", "credit_limit": -1 }))).await;
    assert_eq!(invalid.fields(), ["email", "credit_limit"]);
    let invalid = app.call(Method::PUT, &uri, Some(json!({ "address": { "line1": "x" } }))).await;
    assert_eq!(invalid.fields(), ["address.city"]);
    assert_eq!(app.call(Method::GET, &uri, None).await.json::<CustomerBody>(), moved);
    assert_eq!(app.outbox().await.len(), 3);
}

async fn an_update_cannot_take_another_customers_email<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let ada = app.register(ada()).await.json::<CustomerBody>();
    let bob = app.register(with(ada_named("Bob"), "/email", json!("bob@example.com"))).await.json::<CustomerBody>();
    let uri = format!("/customers/{}", bob.id);
    let taken = app.call(Method::PUT, &uri, Some(json!({ "email": "ADA@example.com" }))).await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(app.service.get(bob.id).await.unwrap(), bob);

    // Changing the case of one's own email is no conflict.
    let own =
        app.call(Method::PUT, &format!("/customers/{}", ada.id), Some(json!({ "email": "ada@example.com" }))).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.json::<CustomerBody>().email, "ada@example.com");
    assert_eq!(app.outbox().await.len(), 3);
}

fn ada_named(name: &str) -> Value {
    with(ada(), "/name", json!(name))
}

/// Two clients changing different fields of one customer at once: each
/// update applies on top of the other, none writes back a stale field.
async fn concurrent_partial_updates_keep_every_change<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let app = Arc::new(app);
    let ada = app.register(ada()).await.json::<CustomerBody>();
    let uri = format!("/customers/{}", ada.id);
    let names = {
        let (app, uri) = (app.clone(), uri.clone());
        tokio::spawn(async move {
            for i in 1..=15 {
                let answer = app.call(Method::PUT, &uri, Some(json!({ "name": format!("Ada {i}") }))).await;
                assert_eq!(answer.status, StatusCode::OK);
            }
        })
    };
    let limits = {
        let (app, uri) = (app.clone(), uri.clone());
        tokio::spawn(async move {
            for i in 1..=15 {
                let answer = app.call(Method::PUT, &uri, Some(json!({ "credit_limit": i }))).await;
                assert_eq!(answer.status, StatusCode::OK);
            }
        })
    };
    names.await.unwrap();
    limits.await.unwrap();
    let last = app.service.get(ada.id).await.unwrap();
    assert_eq!((last.name.as_str(), last.credit_limit), ("Ada 15", 15));
    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 31);
    // The last event announces the final state: replicas converge on it.
    assert_eq!(outbox[30].decode::<CustomerUpdated>().unwrap().customer, last);
}

async fn the_consumer_subscribes_to_nothing<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    assert!(app.service.consumer(ConsumerOptions::default()).is_none());
}

async fn reopening_keeps_the_data<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let ada = app.register(ada()).await.json::<CustomerBody>();
    // Migrations already applied are skipped; the rows stay.
    let again = Customer::open(app.store.clone(), Config::default()).await.unwrap();
    assert_eq!(again.get(ada.id).await.unwrap(), ada);
}

testsupport::suite! {
    service: SERVICE,
    open: App::new,
    cases: [
        registering_publishes_the_full_customer,
        the_admin_list_has_everyone_in_registration_order,
        every_invalid_field_is_named,
        a_taken_email_is_a_conflict_whatever_its_case,
        concurrent_registrations_of_one_email_admit_one,
        unknown_ids_are_not_found_and_malformed_ones_bad_requests,
        an_update_changes_what_it_names_and_publishes_the_new_state,
        an_update_cannot_take_another_customers_email,
        concurrent_partial_updates_keep_every_change,
        the_consumer_subscribes_to_nothing,
        reopening_keeps_the_data,
    ],
}
