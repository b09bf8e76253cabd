//! Property tests: JSON round trips keep the hash, every hashed field matters, signatures do
//! not transfer between deployments, and no input panics the decoder.
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use serde_json::{Value, json};
use zos_types::{Deployment, KeyPair, KeyType};

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_]{1,12}"
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn workload_data() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        (1u64..u64::MAX).prop_map(|s| ("zmount".to_string(), json!({"size": s}))),
        (1u64..u64::MAX).prop_map(|s| ("volume".to_string(), json!({"size": s}))),
        (1u64..1 << 40, prop::bool::ANY, text(), prop::bool::ANY).prop_map(|(s, seq, pw, p)| {
            let mode = if seq { "seq" } else { "user" };
            ("zdb".to_string(), json!({"size": s, "mode": mode, "password": pw, "public": p}))
        }),
        (prop::bool::ANY, prop::bool::ANY)
            .prop_map(|(a, b)| ("ip".to_string(), json!({"v4": a, "v6": b}))),
        (0u8..=255, 0u8..=255, any::<u16>(), text()).prop_map(|(a, b, port, key)| {
            ("network".to_string(), json!({"ip_range": format!("10.{a}.0.0/16"),
                "subnet": format!("10.{a}.{b}.0/24"), "wireguard_private_key": key,
                "wireguard_listen_port": port, "peers": []}))
        }),
        (1u8..=255, (250u64 << 20)..(64u64 << 30), text(), prop::collection::btree_map(name(), text(), 0..3))
            .prop_map(|(cpu, mem, ep, env)| {
                ("zmachine".to_string(), json!({"flist": "https://hub/x.flist",
                    "network": {"public_ip": "", "planetary": false, "interfaces": [{"network": "n", "ip": "10.1.1.2"}]},
                    "size": 0, "compute_capacity": {"cpu": cpu, "memory": mem}, "mounts": [],
                    "entrypoint": ep, "env": env, "corex": false}))
            }),
    ]
}

prop_compose! {
    fn deployment()(
        version in 0u32..5,
        twin in 1u32..1000,
        contract in any::<u64>(),
        metadata in text(),
        description in text(),
        workloads in prop::collection::vec((name(), workload_data(), text()), 0..5),
        extra in prop::collection::vec((1u32..1000, prop::bool::ANY, 0u64..5), 0..3),
        weight_required in 0u64..4,
        polka in prop::bool::ANY,
    ) -> Value {
        let mut requests = vec![json!({"twin_id": twin, "required": false, "weight": 1})];
        requests.extend(extra.into_iter().map(|(t, r, w)| json!({"twin_id": t, "required": r, "weight": w})));
        let workloads: Vec<Value> = workloads.into_iter().map(|(n, (t, data), meta)| json!({
            "version": 0, "name": n, "type": t, "data": data, "metadata": meta, "description": "",
            "result": {"created": 0, "state": "", "message": "", "data": null}})).collect();
        json!({"version": version, "twin_id": twin, "contract_id": contract, "metadata": metadata,
            "description": description, "expiration": 0,
            "signature_requirement": {"requests": requests, "weight_required": weight_required,
                "signatures": [], "signature_style": if polka { "polka-wallet" } else { "" }},
            "workloads": workloads})
    }
}

fn parse(v: &Value) -> Deployment {
    Deployment::from_json(v.to_string().as_bytes()).unwrap()
}

/// Paths to fields that are part of the challenge, with a way to change each.
fn mutate(v: &mut Value, which: usize) -> bool {
    let bump_str = |x: &mut Value| *x = Value::String(format!("{}x", x.as_str().unwrap_or("")));
    let bump_num = |x: &mut Value| *x = json!(x.as_u64().unwrap_or(0) + 1);
    match which % 9 {
        0 => bump_num(&mut v["version"]),
        1 => bump_num(&mut v["twin_id"]),
        2 => bump_str(&mut v["metadata"]),
        3 => bump_str(&mut v["description"]),
        4 => bump_num(&mut v["expiration"]),
        5 => bump_num(&mut v["signature_requirement"]["weight_required"]),
        6 => bump_num(&mut v["signature_requirement"]["requests"][0]["weight"]),
        7 => {
            let r = &mut v["signature_requirement"]["requests"][0]["required"];
            *r = json!(!r.as_bool().unwrap_or(false));
        }
        _ => {
            let Some(wls) = v["workloads"].as_array_mut() else {
                return false;
            };
            let Some(w) = wls.first_mut() else {
                return false;
            };
            bump_str(&mut w["metadata"]);
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn json_round_trip_keeps_the_hash(v in deployment()) {
        let d = parse(&v);
        let again = Deployment::from_json(&serde_json::to_vec(&d).unwrap()).unwrap();
        prop_assert_eq!(d.challenge_hash_hex().unwrap(), again.challenge_hash_hex().unwrap());
        prop_assert_eq!(d, again);
    }

    #[test]
    fn changing_a_hashed_field_changes_the_hash(v in deployment(), which in 0usize..9) {
        let before = parse(&v).challenge_hash_hex().unwrap();
        let mut changed = v.clone();
        prop_assume!(mutate(&mut changed, which));
        prop_assert_ne!(before, parse(&changed).challenge_hash_hex().unwrap());
    }

    #[test]
    fn contract_id_and_signatures_do_not_change_the_hash(v in deployment(), c in any::<u64>()) {
        let mut d = parse(&v);
        let before = d.challenge_hash_hex().unwrap();
        d.contract_id = c;
        d.sign(d.twin_id, &KeyPair::from_seed(KeyType::Ed25519, [7; 32])).unwrap();
        prop_assert_eq!(before, d.challenge_hash_hex().unwrap());
    }

    #[test]
    fn a_signature_never_verifies_another_deployment(v in deployment(), which in 0usize..9, sr in prop::bool::ANY) {
        let kt = if sr { KeyType::Sr25519 } else { KeyType::Ed25519 };
        let key = KeyPair::from_seed(kt, [9; 32]);
        let pk = key.public().bytes.to_vec();
        let mut d = parse(&v);
        d.signature_requirement.requests.truncate(1);
        d.signature_requirement.weight_required = 1;
        d.signature_requirement.requests[0].weight = 1;
        d.sign(d.twin_id, &key).unwrap();
        prop_assert!(d.verify(|_| Ok(pk.clone())).is_ok());

        let mut other = serde_json::to_value(&d).unwrap();
        prop_assume!(mutate(&mut other, which));
        let other = parse(&other);
        prop_assume!(other.challenge_hash().unwrap() != d.challenge_hash().unwrap());
        // The other deployment carries d's signature: it must be refused.
        let mut other = other;
        other.signature_requirement.signatures = d.signature_requirement.signatures.clone();
        other.signature_requirement.requests = d.signature_requirement.requests.clone();
        other.twin_id = d.twin_id;
        prop_assume!(other.challenge_hash().unwrap() != d.challenge_hash().unwrap());
        prop_assert!(other.verify(|_| Ok(pk.clone())).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(d) = Deployment::from_json(&bytes) {
            let _ = d.validate();
            let _ = d.challenge_hash();
            let _ = d.verify(|_| Ok(vec![0; 32]));
        }
    }

    #[test]
    fn arbitrary_json_shapes_never_panic(v in deployment(), junk in arb_json(), path in 0usize..12) {
        // Put arbitrary JSON in a place the decoder looks into.
        let mut v = v;
        match path {
            0 => v["workloads"] = junk,
            1 => v["signature_requirement"] = junk,
            2 => v["expiration"] = junk,
            n => {
                if let Some(w) = v["workloads"].as_array_mut().and_then(|w| w.first_mut()) {
                    let key = ["data", "type", "name", "version", "result", "metadata", "description", "data", "data"][n - 3];
                    if key == "data" && n > 9 { w["data"]["network"] = junk } else { w[key] = junk }
                }
            }
        }
        if let Ok(d) = Deployment::from_json(v.to_string().as_bytes()) {
            let _ = d.validate();
            let _ = d.challenge_hash();
            let _ = d.capacity();
            let _ = d.verify(|_| Err("no".into()));
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
