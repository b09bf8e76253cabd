//! Every test vector of the reference (§3.3): challenges, MD5s, signatures, ids, MACs,
//! IPv6 suffixes, capacities and verification error texts.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Value, json};
use zos_types::ids::{
    convert_4to6, format_mac, hardware_addr, ipv6_suffix_hex, network_id, unique,
};
use zos_types::{Capacity, Deployment, KeyPair, KeyType, Workload, workload_id};

fn seed() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn key() -> KeyPair {
    KeyPair::from_seed(KeyType::Ed25519, seed())
}

fn wl(name: &str, typ: &str, data: Value) -> Value {
    json!({"version": 0, "name": name, "type": typ, "data": data, "metadata": "", "description": "",
           "result": {"created": 0, "state": "", "message": "", "data": null}})
}

fn dep(twin: u32, workloads: Vec<Value>, style: &str) -> Deployment {
    let js = json!({"version": 0, "twin_id": twin, "contract_id": 0, "metadata": "", "description": "",
        "expiration": 0,
        "signature_requirement": {"requests": [{"twin_id": twin, "required": false, "weight": 1}],
            "weight_required": 1, "signatures": null, "signature_style": style},
        "workloads": workloads});
    Deployment::from_json(js.to_string().as_bytes()).unwrap()
}

fn wl_challenge(w: &Value) -> String {
    let w: Workload = serde_json::from_value(w.clone()).unwrap();
    let mut c = zos_types::challenge::Challenge::new();
    w.write_challenge(&mut c).unwrap();
    String::from_utf8(c.into_bytes()).unwrap()
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

fn check_wl(w: &Value, challenge: &str, md5: &str) {
    assert_eq!(wl_challenge(w), challenge);
    assert_eq!(md5_hex(challenge), md5);
}

fn sign_hex(d: &Deployment) -> String {
    hex::encode(key().sign(&d.signing_message().unwrap()))
}

fn a0_bf() -> String {
    hex::encode((0xa0u8..=0xbf).collect::<Vec<_>>())
}

#[test]
fn v1_minimal_deployment() {
    let raw = r#"{"version":0,"twin_id":1,"contract_id":0,"metadata":"","description":"","expiration":0,"signature_requirement":{"requests":[{"twin_id":1,"required":false,"weight":1}],"weight_required":1,"signatures":null,"signature_style":""},"workloads":null}"#;
    let d = Deployment::from_json(raw.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(d.challenge().unwrap()).unwrap(),
        "0101false11"
    );
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "294895ef363fb7c894041c7054384d81"
    );
    assert_eq!(
        key().public().to_hex(),
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    );
    assert_eq!(
        sign_hex(&d),
        "998bc3013db3996207705a7a224f38d3d6d0512ecc3ac8b1b6b5ffb4fa36e173978aeb70431084f7a09ceb20c4b98597a9045c69551061d26246204bf6c79904"
    );
}

#[test]
fn v2_contract_id_not_hashed() {
    let js = json!({"version":3,"twin_id":42,"contract_id":999,"metadata":"meta","description":"desc","expiration":0,
        "signature_requirement":{"requests":[{"twin_id":42,"required":true,"weight":1},{"twin_id":7,"required":false,"weight":2}],
        "weight_required":2,"signatures":[],"signature_style":""},"workloads":[]});
    let d = Deployment::from_json(js.to_string().as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(d.challenge().unwrap()).unwrap(),
        "342metadesc042true17false22"
    );
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "e006220281ca53faa381328c2fbda4cb"
    );
}

fn v3_workloads() -> Vec<Value> {
    vec![
        wl(
            "net1",
            "network",
            json!({"ip_range":"10.20.0.0/16","subnet":"10.20.2.0/24",
            "wireguard_private_key":"GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=","wireguard_listen_port":3011,
            "peers":[{"subnet":"10.20.3.0/24","wireguard_public_key":"4KTvZS2KPWYfMr+GbiUUly0ANVg8jBC7xP9Bl79Z8zM=",
                "allowed_ips":["10.20.3.0/24","100.64.20.3/32"],"endpoint":"185.206.122.31:3011"}]}),
        ),
        wl("disk1", "zmount", json!({"size": 10737418240u64})),
        wl("pubip", "ip", json!({"v4": true, "v6": true})),
        wl(
            "vm1",
            "zmachine",
            json!({"flist":"https://hub.grid.tf/tf-official-apps/base:latest.flist",
            "network":{"public_ip":"pubip","planetary":true,"interfaces":[{"network":"net1","ip":"10.20.2.5"}]},
            "size":0,"compute_capacity":{"cpu":2,"memory":2147483648u64},"mounts":[{"name":"disk1","mountpoint":"/data"}],
            "entrypoint":"/sbin/zinit init","env":{"SSH_KEY":"ssh-ed25519 AAAA test","A":"1"},"corex":false}),
        ),
        wl(
            "zdb1",
            "zdb",
            json!({"size":1073741824u64,"mode":"user","password":"secret","public":true}),
        ),
        wl("vol1", "volume", json!({"size":1073741824u64})),
        wl(
            "logs1",
            "zlogs",
            json!({"zmachine":"vm1","output":"redis://10.20.2.1:6379"}),
        ),
    ]
}

#[test]
fn v3_full_deployment() {
    let w = v3_workloads();
    check_wl(
        &w[0],
        "0net1network10.20.0.0/1610.20.2.0/24GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=30114KTvZS2KPWYfMr+GbiUUly0ANVg8jBC7xP9Bl79Z8zM=185.206.122.31:301110.20.3.0/2410.20.3.0/24100.64.20.3/32",
        "8c4815a056a0e6928a723f9fcfb81d60",
    );
    check_wl(
        &w[1],
        "0disk1zmount10737418240",
        "d1955b098acf1ca1273206e716cf0098",
    );
    check_wl(
        &w[2],
        "0pubipiptruetrue",
        "7adf4254ee4f6a62dccbd52c5439ba77",
    );
    check_wl(
        &w[3],
        "0vm1zmachinehttps://hub.grid.tf/tf-official-apps/base:latest.flistpubiptruenet110.20.2.5022147483648disk1/data/sbin/zinit initA=1SSH_KEY=ssh-ed25519 AAAA test",
        "2f2e2f133a815a25b0caa9b049f2ed8c",
    );
    check_wl(
        &w[4],
        "0zdb1zdb1073741824usersecrettrue",
        "e252004b4bd1e44383fd96e3ca6b671e",
    );
    check_wl(
        &w[5],
        "0vol1volume1073741824",
        "75be3a58438373dab7a24dc436f78386",
    );
    check_wl(
        &w[6],
        "0logs1zlogsvm1redis://10.20.2.1:6379",
        "5754950fa7fbd283df2b9940c257f1fb",
    );

    let mut d = dep(1, w, "");
    d.metadata = r#"{"type":"vm","name":"vm1"}"#.into();
    d.description = "test".into();
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "4beb5bcc7b448fda7750a001892f9370"
    );
    assert_eq!(
        sign_hex(&d),
        "818d52d241178606661867513bcf5424d681fa9e94ccd4b21932f21c32909d70429364a2503aa66b64476ac2e793baa3a4891e7b70dda007abb702fe45107205"
    );
    d.validate().unwrap();

    let caps: HashMap<&str, Capacity> = d
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.capacity().unwrap()))
        .collect();
    assert_eq!(
        caps["disk1"],
        Capacity {
            sru: 10737418240,
            ..Default::default()
        }
    );
    assert_eq!(
        caps["pubip"],
        Capacity {
            ipv4u: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        caps["vm1"],
        Capacity {
            cru: 2,
            mru: 2147483648,
            sru: 524288000,
            ..Default::default()
        }
    );
    assert_eq!(
        caps["zdb1"],
        Capacity {
            hru: 1073741824,
            ..Default::default()
        }
    );
    assert_eq!(
        caps["vol1"],
        Capacity {
            sru: 1073741824,
            ..Default::default()
        }
    );
}

#[test]
fn v4_mycelium_and_gpu() {
    let net2 = wl(
        "net2",
        "network",
        json!({"ip_range":"10.1.0.0/16","subnet":"10.1.1.0/24",
        "wireguard_private_key":"key","wireguard_listen_port":0,"peers":[],"mycelium":{"hex_key":a0_bf(),"peers":null}}),
    );
    check_wl(
        &net2,
        &format!("0net2network10.1.0.0/1610.1.1.0/24key0{}", a0_bf()),
        "93fb0aa898fbff06626ceef7e3a10746",
    );
    let vm2 = wl(
        "vm2",
        "zmachine",
        json!({"flist":"https://hub.grid.tf/x.flist",
        "network":{"public_ip":"","planetary":false,"mycelium":{"Network":"net2","hex_seed":"010203040506"},
                   "interfaces":[{"network":"net2","ip":"10.1.1.2"}]},
        "size":2147483648u64,"compute_capacity":{"cpu":1,"memory":536870912},"mounts":[],"entrypoint":"","env":{},
        "corex":true,"gpu":["0000:28:00.0/1002/731f"]}),
    );
    check_wl(
        &vm2,
        "0vm2zmachinehttps://hub.grid.tf/x.flistfalsenet210.1.1.2net2010203040506214748364815368709120000:28:00.0/1002/731f",
        "4c4353ea6d1102260436ce0b0887ddb5",
    );
    let d = dep(1, vec![net2, vm2], "");
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "490dc9b8260f38f8cac53d1291107f30"
    );
    assert_eq!(
        sign_hex(&d),
        "d7f019fccf333797c2393837b64ff75958742b7fcb6121b2260d56915b13dda818fac4eff91fe844a3977b72321a9067020abf1fbb2d1181ef6feb6023db8e0f"
    );
}

#[test]
fn v5_gateways_polka_wallet() {
    let gw1 = wl(
        "gw1",
        "gateway-name-proxy",
        json!({"name":"example","tls_passthrough":false,"backends":["http://1.2.3.4:8080"]}),
    );
    check_wl(
        &gw1,
        "0gw1gateway-name-proxyexamplefalsehttp://1.2.3.4:8080",
        "9574b022f35955322d4913bd10892abe",
    );
    let gw2 = wl(
        "gw2",
        "gateway-fqdn-proxy",
        json!({"fqdn":"a.b.com","tls_passthrough":true,"backends":["1.2.3.4:443"],"network":"net1"}),
    );
    check_wl(
        &gw2,
        "0gw2gateway-fqdn-proxya.b.comtrue1.2.3.4:443net1",
        "52fdd246f0a99f11697e0062d30488aa",
    );
    let mut d = dep(5, vec![gw1, gw2], "polka-wallet");
    let ch = String::from_utf8(d.challenge().unwrap()).unwrap();
    assert!(ch.ends_with("5false11polka-wallet"), "{ch}");
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "18640a12837c73f8df2f6419ed0b06e9"
    );
    assert_eq!(
        d.signing_message().unwrap(),
        b"<Bytes>18640a12837c73f8df2f6419ed0b06e9</Bytes>"
    );
    assert_eq!(
        sign_hex(&d),
        "9186b1502d296e3ad5c1f4be61b47d385ee120be465d61188dc838b9c3e14451b8c55e4568a8ece6157b147c813d8b25726d3511bea2ed021d6838125a46760b"
    );
    d.sign(5, &key()).unwrap();
    let pk = key().public().bytes.to_vec();
    d.verify(|_| Ok(pk.clone())).unwrap();
}

#[test]
fn v6_light_types() {
    let netl = wl(
        "netl",
        "network-light",
        json!({"subnet":"10.1.2.0/24","mycelium":{"hex_key":a0_bf(),"peers":null}}),
    );
    check_wl(
        &netl,
        &format!("0netlnetwork-light<nil>10.1.2.0/240{}", a0_bf()),
        "05a527177d141f2ed3f4398566eed5e9",
    );
    let vml = wl(
        "vml",
        "zmachine-light",
        json!({"flist":"https://hub.grid.tf/x.flist",
        "network":{"mycelium":{"Network":"netl","hex_seed":"010203040506"},"interfaces":[{"network":"netl","ip":"10.1.2.3"}]},
        "size":0,"compute_capacity":{"cpu":1,"memory":1073741824u64}}),
    );
    check_wl(
        &vml,
        "0vmlzmachine-lighthttps://hub.grid.tf/x.flistnetl10.1.2.3netl010203040506011073741824",
        "65697852c2f0c64c74bf5a9452d67183",
    );
    let d = dep(1, vec![netl, vml], "");
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "dfd0d336afb5b979d113e479ab79cd66"
    );
    assert_eq!(
        sign_hex(&d),
        "ecec644083ec3fcd7680f7322b6f0eef8eb7a6ce8ece87551313bc59d1b071508c7162d1afd739dc865b1d1a33d264e72911e9aeec8924a5c3cbef4c3f41400e"
    );
    d.validate().unwrap();
}

#[test]
fn v7_ipv4_and_qsfs() {
    let ip4 = wl("ip4", "ipv4", json!({}));
    check_wl(&ip4, "0ip4ipv4", "67a481aaceeafae3121c18d5ddc5b2d6");
    let enc = json!({"algorithm":"AES","key":a0_bf()});
    let qs = wl(
        "qs",
        "qsfs",
        json!({"cache":104857600,"config":{"minimal_shards":2,"expected_shards":4,
        "redundant_groups":0,"redundant_nodes":0,"max_zdb_data_dir_size":32,"encryption":enc,
        "meta":{"type":"zdb","config":{"prefix":"pre","encryption":enc,
            "backends":[{"address":"[2a02::1]:9900","namespace":"ns1","password":"pw"}]}},
        "groups":[{"backends":[{"address":"[2a02::2]:9900","namespace":"ns2","password":"pw2"}]}],
        "compression":{"algorithm":"snappy"}}}),
    );
    let k = a0_bf();
    check_wl(
        &qs,
        &format!(
            "0qsqsfs104857600240032AES{k}zdbpreAES{k}[2a02::1]:9900ns1pw[2a02::2]:9900ns2pw2snappy"
        ),
        "8154e40cf7dcb4cc63d319480ee4f636",
    );
    let d = dep(1, vec![ip4, qs], "");
    assert_eq!(
        d.challenge_hash_hex().unwrap(),
        "0563880b6fe81cc245582d926c2c5459"
    );
}

#[test]
fn ids() {
    assert_eq!(workload_id(1, 1234, "vm1"), "1-1234-vm1");
    assert_eq!(unique("1-1234-vm1", "net1"), "DvnEEWyEnKoJE");
    assert_eq!(unique("1-1234-vm1", "ygg"), "BTRxNQaCT5tx6");
    assert_eq!(network_id(1, "net1"), "HFzUQHtqE2iA5");
    assert_eq!(network_id(42, "mynet"), "56BZN8Jf3Nc6L");
}

#[test]
fn macs_and_ipv6_suffixes() {
    assert_eq!(format_mac(&hardware_addr(&[])), "d6:1d:8c:d9:8f:00");
    assert_eq!(format_mac(&hardware_addr(&[0x42])), "9e:5e:d6:78:fe:57");
    let node_id = b"A34YUGenHKyhjDMAUKZe4cVDtJM2wQ4n4XRkfGUUEYdy";
    assert_eq!(format_mac(&hardware_addr(node_id)), "8a:d3:36:10:7e:e9");
    assert_eq!(ipv6_suffix_hex(&[], 7), "d4:1d8c:d98f:00b2");
    assert_eq!(ipv6_suffix_hex(&[], 8), "d41d:8cd9:8f00:b204");
    assert_eq!(ipv6_suffix_hex(&[0x42], 7), "9d:5ed6:78fe:57bc");
    assert_eq!(ipv6_suffix_hex(&[0x42], 8), "9d5e:d678:fe57:bcca");
    assert_eq!(ipv6_suffix_hex(node_id, 7), "8b:d336:107e:e915");
    assert_eq!(ipv6_suffix_hex(node_id, 8), "8bd3:3610:7ee9:1507");
}

#[test]
fn derived_public_ip_and_ula() {
    let tap = unique("1-1234-pubip", "pub");
    assert_eq!(tap, "9x4gDTJ4tiohE");
    assert_eq!(
        format_mac(&hardware_addr(tap.as_bytes())),
        "ee:cb:5b:ec:5f:85"
    );
    let ip: IpAddr = "10.20.2.5".parse().unwrap();
    assert_eq!(
        convert_4to6("HFzUQHtqE2iA5", ip).unwrap().to_string(),
        "fd48:467a:5551:2::5"
    );
}

fn verify_err(d: &Deployment) -> String {
    let pk = key().public().bytes.to_vec();
    d.verify(|_| Ok(pk.clone())).unwrap_err().to_string()
}

#[test]
fn verify_error_texts() {
    // Two requests, only the originator signed, weight 1 is enough: still refused upstream.
    let mut d = dep(1, vec![], "");
    d.signature_requirement
        .requests
        .push(zos_types::SignatureRequest {
            twin_id: 2,
            required: false,
            weight: 1,
        });
    d.sign(1, &key()).unwrap();
    assert_eq!(verify_err(&d), "failed to verify signature");

    let mut d = dep(1, vec![], "");
    d.signature_requirement.requests[0].twin_id = 2;
    d.sign(2, &key()).unwrap();
    assert_eq!(
        verify_err(&d),
        "originator twin id must be in the signature requests"
    );

    let mut d = dep(1, vec![], "");
    d.signature_requirement.weight_required = 2;
    d.sign(1, &key()).unwrap();
    assert_eq!(verify_err(&d), "required signature weight is not reached");

    let d = dep(1, vec![], "");
    assert_eq!(verify_err(&d), "missing required signature for twin '1'");

    let mut d = dep(1, vec![], "");
    d.workloads.push(
        serde_json::from_value(json!({"version":1,"name":"a","type":"volume","data":{"size":1}}))
            .unwrap(),
    );
    assert_eq!(
        d.validate().unwrap_err().to_string(),
        "workload 'a' version '1' cannot be higher than deployment version '0'"
    );

    let mut d = dep(1, vec![], "");
    d.sign(1, &key()).unwrap();
    assert_eq!(
        d.verify(|_| Err("twin not found".into()))
            .unwrap_err()
            .to_string(),
        "failed to get public key for twin '1': twin not found"
    );
    d.signature_requirement.signatures[0].signature = "zz".into();
    assert_eq!(
        verify_err(&d),
        "invalid signature: encoding/hex: invalid byte: U+007A 'z'"
    );
}

#[test]
fn sr25519_sign_and_verify() {
    let sr = KeyPair::from_seed(KeyType::Sr25519, seed());
    let mut d = dep(1, v3_workloads(), "");
    d.sign(1, &sr).unwrap();
    assert_eq!(
        d.signature_requirement.signatures[0].signature_type,
        "sr25519"
    );
    let pk = sr.public().bytes.to_vec();
    d.verify(|_| Ok(pk.clone())).unwrap();
    // The same bytes read as an ed25519 signature do not verify.
    d.signature_requirement.signatures[0].signature_type = "ed25519".into();
    assert_eq!(
        d.verify(|_| Ok(pk.clone())).unwrap_err().to_string(),
        "failed to verify signature"
    );
}

#[test]
fn validation_texts() {
    let cases = [
        (wl("a", "zmount", json!({"size": 0})), "invalid size"),
        (
            wl("a", "zdb", json!({"size": 1, "mode": "x"})),
            "invalid mode",
        ),
        (
            wl("a", "ip", json!({})),
            "public ip workload with no selections",
        ),
        (
            wl(
                "a",
                "network",
                json!({"subnet": "10.0.1.0/24", "wireguard_private_key": "k"}),
            ),
            "network IP range cannot be empty",
        ),
        (
            wl("a", "teapot", json!({})),
            "invalid reservation type 'teapot'",
        ),
        (
            wl("ygg", "volume", json!({"size": 1})),
            "name 'ygg' is invalid: invalid name 'ygg' is reserved",
        ),
        (
            wl("a-b", "volume", json!({"size": 1})),
            "name 'a-b' is invalid: unsupported character in workload name",
        ),
        (
            wl(
                "a",
                "zlogs",
                json!({"zmachine": "vm", "output": "redis://x"}),
            ),
            "no zmachine with name 'vm' found",
        ),
        (
            wl(
                "a",
                "gateway-name-proxy",
                json!({"name": "x", "backends": []}),
            ),
            "backends list can not be empty",
        ),
    ];
    for (w, want) in cases {
        let d = dep(1, vec![w], "");
        assert_eq!(d.validate().unwrap_err().to_string(), want);
    }
    let d = dep(
        1,
        vec![
            wl("a", "volume", json!({"size": 1})),
            wl("a", "volume", json!({"size": 2})),
        ],
        "",
    );
    assert_eq!(
        d.validate().unwrap_err().to_string(),
        "multiple workloads with the same name 'a'"
    );
    let d = dep(1, vec![json!({"name": "a", "type": "volume"})], "");
    assert!(
        d.validate()
            .unwrap_err()
            .to_string()
            .starts_with("failed to load data into object of type '*zos.Volume'")
    );
}

#[test]
fn upgrade_diff() {
    let old = dep(
        1,
        vec![
            wl("a", "volume", json!({"size": 1})),
            wl("b", "volume", json!({"size": 1})),
            wl("c", "zdb", json!({"size":1,"mode":"user"})),
        ],
        "",
    );
    let mut new = old.clone();
    new.version = 1;
    new.workloads.retain(|w| w.name != "b");
    new.workloads[0].version = 1; // a updated
    let mut d: Workload = serde_json::from_value(wl("d", "volume", json!({"size": 3}))).unwrap();
    d.version = 1;
    new.workloads.push(d);
    let ops = old.upgrade(&mut new).unwrap();
    use zos_types::UpgradeOp::*;
    assert_eq!(
        ops,
        vec![
            ("a".to_string(), Update),
            ("d".to_string(), Add),
            ("b".to_string(), Remove)
        ]
    );
    let mut wrong = new.clone();
    wrong.version = 3;
    assert_eq!(
        old.upgrade(&mut wrong).unwrap_err().to_string(),
        "expecting deployment version 1, got 3"
    );
}
