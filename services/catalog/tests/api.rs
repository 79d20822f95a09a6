#![allow(clippy::unwrap_used)]
//! The catalog service end to end through its router (behind polis's
//! standard layers), with the events it leaves in its outbox: one suite,
//! run on SQLite and on PostgreSQL.

use polis_runtime::Service as _;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use catalog::{Catalog, Config, SERVICE};
use contracts::catalog::{PriceChanged, Product, ProductAdded, ProductRenamed};
use polis_bus::ConsumerOptions;
use polis_core::Message;
use polis_runtime::Page;
use polis_store::sql::{Sql, SqlStore};
use serde_json::{Value, json};
use testsupport::{Answer, hosted, outbox};

/// A catalog service on a fresh store, with its router as a host serves it.
struct App<S> {
    service: Catalog<S>,
    router: Router,
    store: Arc<S>,
}

impl<S> App<S>
where
    S: SqlStore,
    S::Tx: Sql,
{
    async fn new(store: Arc<S>) -> Self {
        let service = Catalog::open(store.clone(), Config::default()).await.unwrap();
        let router = hosted(service.router());
        Self { service, router, store }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Answer {
        testsupport::call(&self.router, method, uri, body).await
    }

    async fn add(&self, sku: &str, price: i64) -> Answer {
        self.call(
            Method::POST,
            "/products",
            Some(json!({ "sku": sku, "name": format!("Product {sku}"), "price": price })),
        )
        .await
    }

    async fn set_price(&self, sku: &str, price: Value) -> Answer {
        self.call(Method::PUT, &format!("/products/{sku}/price"), Some(json!({ "price": price }))).await
    }

    /// Every message in the outbox (the tests run no relay, so nothing leaves).
    async fn outbox(&self) -> Vec<Message> {
        outbox(&*self.store).await
    }
}

async fn adding_publishes_the_product<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let created =
        app.call(Method::POST, "/products", Some(json!({ "sku": "MUG-1", "name": " Mug ", "price": 1250 }))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mug = created.json::<Product>();
    assert_eq!(mug, Product { sku: "MUG-1".into(), name: "Mug".into(), price: 1250 });
    assert_eq!(created.headers[header::LOCATION], "/products/MUG-1");

    let fetched = app.call(Method::GET, "/products/MUG-1", None).await;
    assert_eq!((fetched.status, fetched.json::<Product>()), (StatusCode::OK, mug.clone()));

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    assert!(outbox[0].is::<ProductAdded>());
    assert_eq!((outbox[0].source.as_str(), outbox[0].key.as_str()), (SERVICE, "MUG-1"));
    assert_eq!(outbox[0].decode::<ProductAdded>().unwrap().product, mug);
}

async fn the_list_is_ordered_by_sku_byte_for_byte<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let empty = app.call(Method::GET, "/products", None).await;
    assert_eq!((empty.status, empty.body), (StatusCode::OK, json!([])));
    for sku in ["b-2", "B-1", "a_1", "A-10", "Z", "0", "A-2", "_x", "-y"] {
        assert_eq!(app.add(sku, 100).await.status, StatusCode::CREATED, "{sku}");
    }
    let listed: Vec<Product> = serde_json::from_value(app.call(Method::GET, "/products", None).await.body).unwrap();
    let skus: Vec<_> = listed.iter().map(|p| p.sku.as_str()).collect();
    assert_eq!(skus, ["-y", "0", "A-10", "A-2", "B-1", "Z", "_x", "a_1", "b-2"]);
    assert_eq!(app.service.list(&Page::first(100)).await.unwrap(), listed);
}

/// `?limit=1` answers one product, and asking after its sku the next: the
/// list is read page by page in sku order, never all at once.
async fn the_list_is_paged_by_sku<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    for sku in ["C", "A", "B"] {
        assert_eq!(app.add(sku, 100).await.status, StatusCode::CREATED, "{sku}");
    }
    let skus = |answer: Answer| -> Vec<String> {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json::<Vec<Product>>().into_iter().map(|p| p.sku).collect()
    };
    assert_eq!(skus(app.call(Method::GET, "/products?limit=1", None).await), ["A"]);
    assert_eq!(skus(app.call(Method::GET, "/products?limit=1&after=A", None).await), ["B"]);
    assert_eq!(skus(app.call(Method::GET, "/products?after=A&limit=5", None).await), ["B", "C"]);
    assert_eq!(skus(app.call(Method::GET, "/products?limit=2&after=C", None).await), Vec::<String>::new());
    // A cursor need not be a product's sku: the page starts after it.
    assert_eq!(skus(app.call(Method::GET, "/products?after=A-", None).await), ["B", "C"]);
    // A parameter the list does not read is refused, as on every route.
    let unknown = app.call(Method::GET, "/products?limit=1&sort=desc", None).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    assert!(unknown.is_problem());
    assert_eq!(unknown.body["errors"][0]["field"], "sort", "{}", unknown.body);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=10001", "limit"),
        ("limit", "limit"),
        ("after=a%20b", "after"),
        ("after=", "after"),
    ] {
        let answer = app.call(Method::GET, &format!("/products?{query}"), None).await;
        assert!(answer.is_problem(), "{query}");
        assert_eq!(answer.fields(), [field], "{query}");
    }
}

async fn every_invalid_field_is_named<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let good = json!({ "sku": "MUG-1", "name": "Mug", "price": 1250 });
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("sku", json!("")), vec!["sku"]),
        (with("sku", json!("MUG 1")), vec!["sku"]),
        (with("sku", json!("MUG/1")), vec!["sku"]),
        (with("sku", json!("MÜG")), vec!["sku"]),
        (with("sku", json!("x".repeat(65))), vec!["sku"]),
        (with("name", json!("")), vec!["name"]),
        (with("name", json!("x".repeat(201))), vec!["name"]),
        // PostgreSQL refuses NUL in text: it must be a 422, not a failed insert.
        (with("name", json!("Mug\u{0}")), vec!["name"]),
        // Text people read hides nothing: no bidi overrides, no zero-width characters.
        (with("name", json!("Mug\u{202E}gpj.exe")), vec!["name"]),
        (with("name", json!("M\u{200B}ug")), vec!["name"]),
        (with("name", json!("Mug\u{2066}")), vec!["name"]),
        (with("price", json!(-1)), vec!["price"]),
        (with("price", json!("12.50")), vec!["price"]),
        (json!({ "sku": "MUG-1", "name": "Mug" }), vec!["price"]),
        (json!({ "sku": "", "name": " ", "price": -5 }), vec!["sku", "name", "price"]),
    ];
    for (body, fields) in cases {
        let answer = app.call(Method::POST, "/products", Some(body.clone())).await;
        assert_eq!(answer.fields(), fields, "{body}");
        assert!(answer.is_problem());
    }
    assert_eq!(app.call(Method::GET, "/products", None).await.body, json!([]));
    assert!(app.outbox().await.is_empty());
    assert_eq!(app.add(&"x".repeat(64), 0).await.status, StatusCode::CREATED);
}

async fn a_taken_sku_is_a_conflict<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    assert_eq!(app.add("MUG-1", 1250).await.status, StatusCode::CREATED);
    let again = app.add("MUG-1", 999).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.is_problem());
    assert_eq!(again.body["field"], "sku");
    // Skus are case-sensitive: another case is another product.
    assert_eq!(app.add("mug-1", 500).await.status, StatusCode::CREATED);
    assert_eq!(app.service.get("MUG-1").await.unwrap().price, 1250);
    assert_eq!(app.outbox().await.len(), 2);
}

async fn concurrent_adds_of_one_sku_admit_one<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.add("MUG-1", 1000 + i).await.status })
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

async fn unknown_skus_are_not_found<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    for sku in ["NOPE", "not%20a%20sku", &"x".repeat(65)] {
        let got = app.call(Method::GET, &format!("/products/{sku}"), None).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{sku}");
        assert!(got.is_problem());
        let put = app.set_price(sku, json!(100)).await;
        assert_eq!(put.status, StatusCode::NOT_FOUND, "{sku}");
        assert!(put.is_problem());
    }
    // Not even text: a problem all the same.
    let garbled = app.call(Method::GET, "/products/%FF", None).await;
    assert_eq!(garbled.status, StatusCode::BAD_REQUEST);
    assert!(garbled.is_problem());
    assert!(app.outbox().await.is_empty());
}

async fn a_price_change_announces_old_and_new_price<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    app.add("MUG-1", 1250).await;
    let changed = app.set_price("MUG-1", json!(1500)).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.json::<Product>(), Product { sku: "MUG-1".into(), name: "Product MUG-1".into(), price: 1500 });
    assert_eq!(app.call(Method::GET, "/products/MUG-1", None).await.json::<Product>().price, 1500);

    // The same price again: nothing to announce.
    let same = app.set_price("MUG-1", json!(1500)).await;
    assert_eq!((same.status, same.json::<Product>().price), (StatusCode::OK, 1500));
    // Free is a price.
    assert_eq!(app.set_price("MUG-1", json!(0)).await.json::<Product>().price, 0);

    assert_eq!(app.set_price("MUG-1", json!(-1)).await.fields(), ["price"]);
    assert_eq!(app.set_price("MUG-1", json!("cheap")).await.fields(), ["price"]);
    let missing = app.call(Method::PUT, "/products/MUG-1/price", Some(json!({}))).await;
    assert_eq!(missing.fields(), ["price"]);

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 3);
    assert!(outbox.iter().all(|m| m.key == "MUG-1"));
    assert!(outbox[1..].iter().all(Message::is::<PriceChanged>));
    let changes: Vec<_> = outbox[1..].iter().map(|m| m.decode::<PriceChanged>().unwrap()).collect();
    assert_eq!(
        changes,
        [
            PriceChanged { sku: "MUG-1".into(), old_price: 1250, new_price: 1500 },
            PriceChanged { sku: "MUG-1".into(), old_price: 1500, new_price: 0 },
        ]
    );
}

/// Concurrent price changes apply one after the other: the announced
/// changes form one chain from the first price to the last, so a reader
/// applying them in order ends at the stored price.
async fn a_patch_renames_and_reprices_announcing_each_change<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    app.add("MUG-1", 1250).await;
    let patch = |body: Value| app.call(Method::PATCH, "/products/MUG-1", Some(body));
    let both = patch(json!({ "name": "  Big mug ", "price": 1400 })).await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.body);
    assert_eq!(both.json::<Product>(), Product { sku: "MUG-1".into(), name: "Big mug".into(), price: 1400 });
    // Only the name; then what is already so: nothing changes, nothing is announced.
    assert_eq!(patch(json!({ "name": "Huge mug" })).await.json::<Product>().price, 1400);
    assert_eq!(patch(json!({ "name": "Huge mug", "price": 1400 })).await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, "/products/MUG-1", None).await.json::<Product>().name, "Huge mug");

    assert_eq!(patch(json!({})).await.json::<Product>().name, "Huge mug", "an empty patch changes nothing");
    assert_eq!(patch(json!({ "name": "", "price": -1 })).await.fields(), ["name", "price"]);
    assert_eq!(patch(json!({ "colour": "red" })).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = app.call(Method::PATCH, "/products/NOPE", Some(json!({ "price": 1 }))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let outbox = app.outbox().await;
    let types: Vec<_> = outbox[1..].iter().map(|m| m.message_type.as_str()).collect();
    assert_eq!(types, ["catalog.product-renamed.v1", "catalog.price-changed.v1", "catalog.product-renamed.v1"]);
    assert!(outbox.iter().all(|m| m.key == "MUG-1"));
    assert_eq!(
        outbox[1].decode::<ProductRenamed>().unwrap(),
        ProductRenamed { sku: "MUG-1".into(), old_name: "Product MUG-1".into(), new_name: "Big mug".into() }
    );
    assert_eq!(
        outbox[3].decode::<ProductRenamed>().unwrap(),
        ProductRenamed { sku: "MUG-1".into(), old_name: "Big mug".into(), new_name: "Huge mug".into() }
    );
}

async fn concurrent_price_changes_form_a_chain<S: SqlStore>(app: App<S>)
where
    S::Tx: Sql,
{
    let app = Arc::new(app);
    app.add("MUG-1", 1).await;
    let tasks: Vec<_> = (0..4_i64)
        .map(|task| {
            let app = app.clone();
            tokio::spawn(async move {
                for round in 0..8_i64 {
                    let answer = app.set_price("MUG-1", json!(100 + task * 100 + round)).await;
                    assert_eq!(answer.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let changes: Vec<PriceChanged> = app.outbox().await[1..].iter().map(|m| m.decode().unwrap()).collect();
    assert_eq!(changes.len(), 32);
    let mut price = 1;
    for change in &changes {
        assert_eq!(change.old_price, price, "{changes:?}");
        price = change.new_price;
    }
    assert_eq!(app.service.get("MUG-1").await.unwrap().price, price);
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
    let mug = app.add("MUG-1", 1250).await.json::<Product>();
    // Migrations already applied are skipped; the rows stay.
    let again = Catalog::open(app.store.clone(), Config::default()).await.unwrap();
    assert_eq!(again.get("MUG-1").await.unwrap(), mug);
}

testsupport::suite! {
    service: SERVICE,
    open: App::new,
    cases: [
        adding_publishes_the_product,
        the_list_is_ordered_by_sku_byte_for_byte,
        the_list_is_paged_by_sku,
        every_invalid_field_is_named,
        a_taken_sku_is_a_conflict,
        concurrent_adds_of_one_sku_admit_one,
        unknown_skus_are_not_found,
        a_price_change_announces_old_and_new_price,
        a_patch_renames_and_reprices_announcing_each_change,
        concurrent_price_changes_form_a_chain,
        the_consumer_subscribes_to_nothing,
        reopening_keeps_the_data,
    ],
}
