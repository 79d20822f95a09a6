#![allow(clippy::unwrap_used)]
//! Several instances of a service behind one upstream (ADR 0011): calls
//! take turns, a dead instance is skipped and a call it failed goes to the
//! next when that is safe, and a recovered instance gets calls again.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use gateway::{Upstream, UpstreamError};
use polis_runtime::serve::{self, RunningServer};
use tokio::io::AsyncReadExt;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An instance answering `GET /who` and `POST /things` with its name,
/// counting the calls it gets.
fn instance(name: &'static str, calls: Arc<AtomicUsize>) -> Router {
    let (get_calls, post_calls) = (calls.clone(), calls);
    Router::new()
        .route(
            "/who",
            get(move || async move {
                get_calls.fetch_add(1, Ordering::SeqCst);
                name
            }),
        )
        .route(
            "/things",
            post(move || async move {
                post_calls.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, name)
            }),
        )
}

async fn listen_on(addr: SocketAddr, router: Router) -> RunningServer {
    let listener = serve::bind(addr).await.unwrap();
    serve::spawn(listener, router, &polis_runtime::HttpOptions::default()).unwrap()
}

async fn call(upstream: &Upstream, method: Method, path: &str) -> Result<String, UpstreamError> {
    let body = (method == Method::POST).then(|| Bytes::from_static(b"{}"));
    let answer = upstream.call(method, path, body, None, TIMEOUT).await?;
    assert!(answer.status.is_success(), "{answer:?}");
    Ok(String::from_utf8(answer.body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_take_turns_skip_a_dead_instance_and_come_back_to_it() {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (a_calls, b_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = listen_on(any, instance("a", a_calls.clone())).await;
    let b = listen_on(any, instance("b", b_calls.clone())).await;
    let upstream = Upstream::remote(&format!("{},{}", a.url(), b.url())).unwrap();

    for _ in 0..10 {
        call(&upstream, Method::GET, "/who").await.unwrap();
    }
    assert_eq!((a_calls.load(Ordering::SeqCst), b_calls.load(Ordering::SeqCst)), (5, 5), "in turn");

    // a dies: every call still succeeds, on b, the non-repeatable ones too
    // (a refused the connection: nothing was sent).
    let a_addr = a.addr();
    a.shutdown().await.unwrap();
    for _ in 0..6 {
        assert_eq!(call(&upstream, Method::GET, "/who").await.unwrap(), "b");
        assert_eq!(call(&upstream, Method::POST, "/things").await.unwrap(), "b");
    }
    let status = upstream.instances();
    assert_eq!(status.iter().map(|i| i.ejected).collect::<Vec<_>>(), vec![true, false], "{status:?}");

    // a is back, on its address: skipped until its ejection ends, then in turn again.
    let again = Arc::new(AtomicUsize::new(0));
    let _a = listen_on(a_addr, instance("a", again.clone())).await;
    for _ in 0..4 {
        assert_eq!(call(&upstream, Method::GET, "/who").await.unwrap(), "b");
    }
    assert_eq!(again.load(Ordering::SeqCst), 0, "an ejected instance got a call");
    polis_testkit::wait_for(Duration::from_secs(10), || async { upstream.instances().iter().all(|i| !i.ejected) })
        .await
        .unwrap();
    for _ in 0..4 {
        call(&upstream, Method::GET, "/who").await.unwrap();
    }
    assert_eq!(again.load(Ordering::SeqCst), 2, "back in turn");
    drop(b);
}

/// An instance that takes the request and drops the connection unanswered:
/// a call that can be repeated goes to the next instance; one that cannot
/// fails (the first instance may have acted on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_repeatable_call_is_retried_after_it_was_sent() {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let dropper = tokio::net::TcpListener::bind(any).await.unwrap();
    let dropper_url = format!("http://{}", dropper.local_addr().unwrap());
    let taken = Arc::new(AtomicUsize::new(0));
    let counted = taken.clone();
    let _dropping = tokio::spawn(async move {
        loop {
            let (mut socket, _) = dropper.accept().await.unwrap();
            let mut buffer = [0_u8; 4096];
            let _ = socket.read(&mut buffer).await;
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let b_calls = Arc::new(AtomicUsize::new(0));
    let b = listen_on(any, instance("b", b_calls.clone())).await;
    let upstream = Upstream::remote(&format!("{dropper_url},{}", b.url())).unwrap();

    // The round robin starts at the dropper: the POST is sent there and lost.
    let lost = call(&upstream, Method::POST, "/things").await;
    assert!(matches!(lost, Err(UpstreamError::Unavailable(_))), "{lost:?}");
    assert_eq!((taken.load(Ordering::SeqCst), b_calls.load(Ordering::SeqCst)), (1, 0), "not repeated on b");

    // Its ejection over, the dropper's turn comes again, with a GET this time.
    polis_testkit::wait_for(Duration::from_secs(10), || async { upstream.instances().iter().all(|i| !i.ejected) })
        .await
        .unwrap();
    let mut answered = 0;
    while taken.load(Ordering::SeqCst) < 2 {
        assert_eq!(call(&upstream, Method::GET, "/who").await.unwrap(), "b");
        answered += 1;
        assert!(answered < 10, "the dropper never got its turn");
    }
}
