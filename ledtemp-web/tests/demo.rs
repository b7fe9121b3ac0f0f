//! `ledtemp-web demo` in-process: its simulated nodes are accepted and shown, its forger's frames
//! are refused and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;

use ledtemp_web::{Demo, DemoArgs};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_three_live_devices_and_refuses_the_forger() {
    let demo = Demo::start(DemoArgs {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        no_forger: false,
        insecure_plaintext: false,
    })
    .await
    .unwrap();
    let addr = demo.http_addr();
    let devices = eventually("three devices online with readings", || async move {
        let (_, devices) = get_json(addr, "/api/devices").await;
        let all_live = devices.as_array().is_some_and(|list| {
            list.len() == 3
                && list.iter().all(|d| {
                    d["online"] == true
                        && d["temperatures"].as_array().is_some_and(|t| !t.is_empty())
                })
        });
        all_live.then_some(devices)
    })
    .await;
    let ids: Vec<&str> =
        devices.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["garage", "greenhouse", "kitchen-pi"]);
    eventually("the forger's frames refused", || async move {
        let (_, stats) = get_json(addr, "/api/stats").await;
        let r = &stats["rejected"];
        (r["bad_tag"].as_u64().unwrap() >= 1 && r["unknown_device"].as_u64().unwrap() >= 1)
            .then_some(())
    })
    .await;
    let (status, page) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    demo.shutdown().await.unwrap();
}

/// The teaching "before": the same three nodes publish plain MQTT, the server says so, and the
/// forger's frames are accepted (it is the project's lesson, not a feature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insecure_plaintext_demo_says_so_and_lets_the_forger_in() {
    let demo = Demo::start(DemoArgs {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        no_forger: false,
        insecure_plaintext: true,
    })
    .await
    .unwrap();
    let addr = demo.http_addr();
    let stats = eventually("readings accepted in plaintext", || async move {
        let (_, stats) = get_json(addr, "/api/stats").await;
        (stats["accepted"].as_u64().unwrap() >= 6).then_some(stats)
    })
    .await;
    assert_eq!(stats["insecure_plaintext"], true, "{stats}");
    let ids = eventually("a device the demo does not run", || async move {
        let (_, devices) = get_json(addr, "/api/devices").await;
        let ids: Vec<String> = devices
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        ids.iter()
            .any(|id| !["garage", "greenhouse", "kitchen-pi"].contains(&id.as_str()))
            .then_some(ids)
    })
    .await;
    assert!(ids.len() > 3, "{ids:?}");
    demo.shutdown().await.unwrap();
}
