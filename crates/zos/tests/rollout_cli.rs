//! Black-box: `zos ledger set-version` (council only; staged by farm and share) and
//! `zos ledger version` (text and JSON, with a halted rollout's reason) against a real
//! `zos ledger serve --dev`. The node side (twin, farm, node, rollback report) goes through
//! the ledger client, as a node would.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::TempDir;
use common::cli::{bare, ledger, ok};

use std::process::Output;

use zos_ledger::{Call, LedgerClient, dev};
use zos_types::crypto::{KeyPair, KeyType};

/// `zos ARGS` against `url` with no client settings from the environment.
fn zos(url: &str, args: &[&str]) -> Output {
    bare().args(args).env("ZOS_LEDGER", url).output().unwrap()
}

#[test]
fn set_version_and_show_the_rollout() {
    let dir = TempDir::new();
    let (_server, url) = ledger(&dir.0, &[]);

    let text = ok(zos(&url, &["ledger", "version"]));
    assert!(text.contains("version: (none set)"), "{text}");

    // Anyone but the council is refused, with the ledger's reason.
    let out = zos(
        &url,
        &["ledger", "set-version", "2.0.0", "--seed", &"11".repeat(32)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only the council"), "{err}");
    // A share outside 1..=100 never reaches the ledger.
    let out = zos(
        &url,
        &[
            "ledger",
            "set-version",
            "2.0.0",
            "--share",
            "0",
            "--dev-council",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "clap usage error");

    // A node in farm 1, registered as a node would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = KeyPair::from_seed(KeyType::Ed25519, [3; 32]);
    rt.block_on(async {
        let c = LedgerClient::new(&url).unwrap();
        c.send(
            &dev::faucet_key(),
            Call::Transfer {
                to: node.public(),
                amount: 1_000_000,
            },
        )
        .await
        .unwrap();
        c.send(
            &node,
            Call::CreateTwin {
                relays: vec![],
                e2e_key: None,
            },
        )
        .await
        .unwrap();
        c.send(&node, Call::CreateFarm { name: "f1".into() })
            .await
            .unwrap();
        c.send(&node, node_call()).await.unwrap();
    });

    ok(zos(
        &url,
        &[
            "ledger",
            "set-version",
            "2.0.0",
            "--safe-to-upgrade",
            "--farm",
            "1",
            "--share",
            "40",
            "--dev-council",
        ],
    ));
    let v: serde_json::Value =
        serde_json::from_str(&ok(zos(&url, &["ledger", "version", "--json"]))).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"version": "2.0.0", "safe_to_upgrade": true, "farms": [1],
            "share_percent": 40})
    );
    let text = ok(zos(&url, &["ledger", "version"]));
    assert!(
        text.contains("farms: 1\n") && text.contains("share: 40% of nodes"),
        "{text}"
    );
    assert!(text.contains("halted: no"), "{text}");

    // The node rolls back from the target: the rollout halts and says why.
    rt.block_on(async {
        let c = LedgerClient::new(&url).unwrap();
        c.send(
            &node,
            Call::report_rollback(1, "2.0.0", "health check: api not answering"),
        )
        .await
        .unwrap();
    });
    let text = ok(zos(&url, &["ledger", "version"]));
    assert!(
        text.contains(
            "halted: yes: node 1 rolled back from 2.0.0: health check: api not answering"
        ),
        "{text}"
    );

    // A new version clears the halt.
    ok(zos(
        &url,
        &[
            "ledger",
            "set-version",
            "2.0.1",
            "--safe-to-upgrade",
            "--dev-council",
        ],
    ));
    let v: serde_json::Value =
        serde_json::from_str(&ok(zos(&url, &["ledger", "version", "--json"]))).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"version": "2.0.1", "safe_to_upgrade": true})
    );
}

fn node_call() -> Call {
    Call::CreateNode {
        farm_id: 1,
        resources: zos_ledger::Resources {
            cru: 2,
            sru: 1 << 30,
            hru: 0,
            mru: 1 << 30,
        },
        location: zos_ledger::Location::default(),
        interfaces: vec![],
        public_config: None,
        features: vec![],
        version: "1.0.0".into(),
        virtualized: true,
        secure_boot: false,
        serial_number: "s".into(),
    }
}
