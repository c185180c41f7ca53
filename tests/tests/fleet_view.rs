//! A large fleet seen through the API: `GET /workers` in pages that follow
//! `Link: rel="next"`, filtered by flavor and op, and `GET /workers/summary`
//! counting by flavor, without sending every worker.
//!
//! The fleet is one real worker plus 2,500 registrations offering an op no
//! task asks for (they are never dispatched to), as a planner beside
//! thousands of idle workers of other flavors sees them.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::System;
use launcher::idle::IDLE_DIGEST;
use reqwest::header::LINK;
use serde_json::Value;
use wire::planner::{WorkerView, WorkersSummary};

const EXTRA: usize = 2_500;

/// Follows `Link: rel="next"` from `first` until a page has none.
async fn walk(system: &System, first: &str) -> Result<(Vec<WorkerView>, usize)> {
    let mut next = Some(first.to_string());
    let (mut all, mut pages) = (Vec::new(), 0);
    while let Some(path) = next.take() {
        let response = system.client.get(system.url(&path)).send().await?;
        ensure!(response.status() == 200, "{path}: {}", response.status());
        if let Some(link) = response.headers().get(LINK) {
            let link = link.to_str()?;
            let target = link
                .strip_prefix('<')
                .and_then(|rest| rest.split_once(">; rel=\"next\""))
                .with_context(|| format!("a next link, got `{link}`"))?
                .0;
            next = Some(target.to_string());
        }
        let page: Vec<WorkerView> = response.json().await?;
        ensure!(!page.is_empty(), "{path} is empty but was linked");
        all.extend(page);
        pages += 1;
        ensure!(pages <= 100, "more pages than workers could fill");
    }
    Ok((all, pages))
}

async fn error_of(system: &System, path: &str) -> Result<(u16, String)> {
    let response = system.client.get(system.url(path)).send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.context("a JSON error body")?;
    Ok((
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    ))
}

#[tokio::test]
async fn thousands_of_workers_are_paged_filtered_and_summarized() -> Result<()> {
    // The extra registrations never heartbeat: keep them for the test.
    let mut system = System::start(&[("HEARTBEAT_TIMEOUT_MS", "600000")]).await?;
    system.add_worker("general", &[]).await?;
    launcher::idle::register(&system.client, &system.url(""), None, "sq", EXTRA as u64).await?;
    let total = EXTRA + 1;

    // Every worker exactly once, in id order, over linked pages.
    let (all, pages) = walk(&system, "/workers?limit=1000").await?;
    assert_eq!(pages, total.div_ceil(1000), "pages of 1,000");
    let ids: Vec<&str> = all.iter().map(|w| w.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "in id order, none twice");
    assert_eq!(ids.len(), total);

    // Without a limit, one page of 1,000 and a link onwards.
    let response = system.client.get(system.url("/workers")).send().await?;
    assert!(response.headers().contains_key(LINK));
    assert_eq!(response.json::<Vec<WorkerView>>().await?.len(), 1_000);

    // Filters hold across pages, and the link keeps them.
    let (sq, _) = walk(&system, "/workers?flavor=sq&limit=700").await?;
    assert_eq!(sq.len(), EXTRA);
    assert!(sq.iter().all(|w| w.flavor == "sq"));
    let (adders, pages) = walk(&system, "/workers?op=add").await?;
    assert_eq!((adders.len(), pages), (1, 1));
    assert_eq!(adders[0].id, "general");
    let after: Vec<WorkerView> = system.get_json("/workers?after=sq-02497").await?;
    let after: Vec<&str> = after.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(after, ["sq-02498", "sq-02499"]);

    // The summary counts everyone and shows only the first few of each flavor.
    let summary: WorkersSummary = system.get_json("/workers/summary?top=3").await?;
    assert_eq!(summary.workers, total as u64);
    assert_eq!(
        summary.slots,
        all.iter().map(|w| u64::from(w.slots)).sum::<u64>()
    );
    let flavors: Vec<(&str, u64, usize)> = summary
        .flavors
        .iter()
        .map(|f| (f.flavor.as_str(), f.workers, f.shown.len()))
        .collect();
    assert_eq!(flavors, [("general", 1, 1), ("sq", EXTRA as u64, 3)]);
    let sq = &summary.flavors[1];
    assert_eq!(sq.digests["sq"][IDLE_DIGEST], EXTRA as u64);
    let shown: Vec<&str> = sq.shown.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(shown, ["sq-00000", "sq-00001", "sq-00002"]);
    let general = &summary.flavors[0];
    assert_eq!(general.digests.keys().collect::<Vec<_>>(), ["add", "mul"]);

    // The summary follows the fleet: a worker leaving is counted out.
    let left = system
        .client
        .delete(system.url("/workers/sq-00000"))
        .send()
        .await?;
    assert_eq!(left.status(), 204);
    e2e::poll(Duration::from_secs(10), "sq-00000 to be gone", || async {
        let summary: WorkersSummary = system.get_json("/workers/summary?top=1").await.ok()?;
        (summary.workers == EXTRA as u64 && summary.flavors[1].shown[0].id == "sq-00001")
            .then_some(())
    })
    .await?;

    // Bad queries are refused with a reason.
    for (path, says) in [
        ("/workers?limit=0", "`limit`"),
        ("/workers?limit=ten", "limit"),
        ("/workers?op=Not%20An%20Op", "invalid op name"),
        ("/workers?color=blue", "color"),
        ("/workers/summary?top=101", "`top`"),
    ] {
        let (status, error) = error_of(&system, path).await?;
        assert_eq!(status, 400, "{path}: {error}");
        assert!(error.contains(says), "{path}: {error}");
    }
    let long = "x".repeat(254);
    let (status, _) = error_of(&system, &format!("/workers?after={long}")).await?;
    assert_eq!(status, 400);
    Ok(())
}
