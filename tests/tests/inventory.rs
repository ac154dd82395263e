//! Inventories and the record of failed targets as real files: the format
//! told from the name or the content, the size bound, odd files, the XDG
//! paths, and an atomic, private record that `select` reads back.
//! (nextest runs each test in a process of its own: setting the
//! environment here races nothing.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use spore::inventory::{self, Inventory, InventoryError, MAX_FILE_BYTES};
use spore::select::{self, select, SelectError, Sources, Target};
use spore_tests::Scratch;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const INI: &str = "[web]\nweb[01:03]\n[db]\ndb1 ansible_host=10.0.0.5 ansible_user=admin\n[prod:children]\nweb\ndb\n";
const YAML: &str = "all:\n  children:\n    web:\n      hosts:\n        web[01:03]:\n    db:\n      hosts:\n        db1:\n          ansible_host: 10.0.0.5\n          ansible_user: admin\n    prod:\n      children:\n        web:\n        db:\n";

fn write(dir: &Scratch, name: &str, text: &[u8]) -> std::path::PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn prod(inv: &Inventory) -> Vec<String> {
    inv.group("prod").unwrap().into_iter().map(|h| h.target).collect()
}

#[test]
fn format_from_name_or_content() {
    let dir = Scratch::new("inv-format");
    let want = ["web01", "web02", "web03", "admin@10.0.0.5"];
    for (name, text) in [
        ("hosts.ini", INI),
        ("hosts", INI),
        ("inventory", INI),
        ("hosts.yml", YAML),
        ("hosts.yaml", YAML),
        ("inventory-yaml", YAML),
        ("with-doc-start", &format!("---\n{YAML}")),
    ] {
        let inv = Inventory::load(&write(&dir, name, text.as_bytes())).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(prod(&inv), want, "{name}");
        assert_eq!(inv.origin(), dir.path(name));
    }
    // The name wins over the content: YAML in a .ini file is an INI error
    // that names the file and the line.
    let e = Inventory::load(&write(&dir, "wrong.ini", YAML.as_bytes())).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:1: ", dir.path("wrong.ini"))), "{e}");
    // spore's own format: a plain list.
    let inv = Inventory::load(&write(&dir, "plain", b"# mine\nweb1\nbastion/db[1-2]/sudo\n")).unwrap();
    let all: Vec<String> = inv.group("all").unwrap().into_iter().map(|h| h.name).collect();
    assert_eq!(all, ["web1", "bastion/db1/sudo", "bastion/db2/sudo"]);
}

#[test]
fn odd_files_are_clear_errors() {
    let dir = Scratch::new("inv-odd");
    let missing = dir.0.join("missing.ini");
    let e = Inventory::load(&missing).unwrap_err();
    assert!(matches!(e, InventoryError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.ini") && e.to_string().contains("No such file"), "{e}");
    let e = Inventory::load(&dir.0).unwrap_err().to_string();
    assert!(e.contains("Is a directory"), "{e}");
    // One byte past the bound (a sparse file: no 16 MiB written).
    let big = dir.0.join("big.ini");
    std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(matches!(Inventory::load(&big), Err(InventoryError::TooLarge { .. })));
    // At the bound it is read (and refused for its NUL bytes, in a short
    // message although the line is 16 MiB long).
    std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES).unwrap();
    let e = Inventory::load(&big).unwrap_err();
    assert!(matches!(e, InventoryError::Syntax { line: 1, .. }), "{e}");
    assert!(e.to_string().len() < 500, "{}", e.to_string().len());
    // An endless file stops at the bound.
    assert!(matches!(Inventory::load(Path::new("/dev/zero")), Err(InventoryError::TooLarge { .. })));
    // Not UTF-8: the line is named.
    let e = Inventory::load(&write(&dir, "latin1.ini", b"[web]\nweb1\ncaf\xe9\n")).unwrap_err();
    assert_eq!(e, InventoryError::NotUtf8 { origin: dir.path("latin1.ini"), line: 3 });
    assert_eq!(e.to_string(), format!("{}:3: not UTF-8 text", dir.path("latin1.ini")));
    // An empty file is an empty inventory.
    let inv = Inventory::load(&write(&dir, "empty", b"")).unwrap();
    assert_eq!(inv.group("all"), Some(vec![]));
}

#[test]
fn default_paths_follow_xdg() {
    std::env::set_var("HOME", "/home/someone");
    std::env::remove_var("XDG_CONFIG_HOME");
    std::env::remove_var("XDG_CACHE_HOME");
    assert_eq!(inventory::default_path().unwrap(), Path::new("/home/someone/.config/spore/inventory"));
    assert_eq!(select::failed_path().unwrap(), Path::new("/home/someone/.cache/spore-cli/failed"));
    std::env::set_var("XDG_CONFIG_HOME", "/x/config");
    std::env::set_var("XDG_CACHE_HOME", "/x/cache");
    assert_eq!(inventory::default_path().unwrap(), Path::new("/x/config/spore/inventory"));
    assert_eq!(select::failed_path().unwrap(), Path::new("/x/cache/spore-cli/failed"));
    // Relative XDG paths are ignored, as the spec says.
    std::env::set_var("XDG_CONFIG_HOME", "rel");
    std::env::set_var("XDG_CACHE_HOME", "");
    assert_eq!(inventory::default_path().unwrap(), Path::new("/home/someone/.config/spore/inventory"));
    assert_eq!(select::failed_path().unwrap(), Path::new("/home/someone/.cache/spore-cli/failed"));
    std::env::remove_var("HOME");
    assert_eq!(inventory::default_path(), None);
    assert_eq!(select::failed_path(), None);
    assert_eq!(select::read_failed(), Ok(None));
    assert!(select::write_failed(&["a".into()]).is_err());
}

#[test]
fn failed_record_round_trip() {
    let dir = Scratch::new("inv-failed");
    std::env::set_var("XDG_CACHE_HOME", dir.path("cache/deeper"));
    let path = select::failed_path().unwrap();
    assert_eq!(select::read_failed(), Ok(None));
    let failed: Vec<String> =
        ["db1", "bastion/web07/sudo:postgres", "me@[::1]:22", "ü-host"].map(String::from).to_vec();
    select::write_failed(&failed).unwrap();
    // The directory is private, the file too, and no temporary is left.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.0.join("cache")), 0o700);
    assert_eq!(mode(&path), 0o600);
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["failed"]);
    let back = select::read_failed().unwrap().unwrap();
    assert_eq!(back, failed);
    // select reads the words back; an inventory host is that host again.
    let inv = Inventory::parse_ini("db1 ansible_host=10.0.0.5\n", "inv").unwrap();
    let ctx = Sources { inventory: Some(&inv), failed: Some(back) };
    let got = select(&["@failed".into()], &["ü*".into()], &ctx).unwrap();
    assert_eq!(
        got,
        [
            Target { label: "db1".into(), path: "10.0.0.5".into() },
            Target { label: "bastion/web07/sudo:postgres".into(), path: "bastion/web07/sudo:postgres".into() },
            Target { label: "me@[::1]:22".into(), path: "me@[::1]:22".into() },
        ]
    );
    // A later run replaces the record; an empty one says "none failed".
    select::write_failed(&[]).unwrap();
    assert_eq!(select::read_failed(), Ok(Some(vec![])));
    let ctx = Sources { inventory: None, failed: select::read_failed().unwrap() };
    let e = select(&["@failed".into()], &[], &ctx).unwrap_err();
    assert_eq!(e.to_string(), "no targets selected by @failed (the last run had no failed targets)");
    // A word that would not read back the same is refused, and the old
    // record stays whole.
    select::write_failed(&["kept".into()]).unwrap();
    for bad in ["a\nb", "", " a", "#a", "a\r", "a\u{0}"] {
        let e = select::write_failed(&["ok".into(), bad.into()]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        assert_eq!(select::read_failed(), Ok(Some(vec!["kept".into()])), "{bad:?}");
    }
    // A record that is not a file is an error naming it.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = select::read_failed().unwrap_err();
    assert!(matches!(&e, SelectError::Read { origin, .. } if origin == &path.display().to_string()), "{e}");
    assert!(select::write_failed(&["x".into()]).is_err());
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["failed"], "no temporary file left after a failed rename");
}

#[test]
fn target_list_from_a_file() {
    let dir = Scratch::new("inv-list");
    let p = write(&dir, "targets.txt", b"# fleet\nweb[01-02]\n\n@db # the databases\n!web02\n");
    let words = select::read_list_from(std::fs::File::open(&p).unwrap(), &p.display().to_string()).unwrap();
    assert_eq!(words, ["web[01-02]", "@db", "!web02"]);
    let inv = Inventory::parse_ini("[db]\ndb1\n", "inv").unwrap();
    let ctx = Sources { inventory: Some(&inv), failed: None };
    let labels: Vec<String> = select(&words, &[], &ctx).unwrap().into_iter().map(|t| t.label).collect();
    assert_eq!(labels, ["web01", "db1"]);
}

#[test]
fn both_formats_select_the_same_fleet() {
    // 250 hosts in racks, a group of groups, settings on groups and hosts:
    // written once as INI and once as YAML, selected the same way.
    let dir = Scratch::new("inv-fleet");
    let mut ini = String::from("[all:vars]\nansible_user=ops\n");
    let mut yaml = String::from("all:\n  vars:\n    ansible_user: ops\n  children:\n");
    for rack in 1..=5 {
        ini.push_str(&format!("[rack{rack}]\nr{rack}-n[01:50]\n[rack{rack}:vars]\nansible_port={}\n", 2200 + rack));
        yaml.push_str(&format!(
            "    rack{rack}:\n      hosts:\n        r{rack}-n[01:50]:\n      vars:\n        ansible_port: {}\n",
            2200 + rack
        ));
    }
    ini.push_str("[odd:children]\nrack1\nrack3\nrack5\n[special]\nr2-n07 ansible_host=10.0.0.7 ansible_port=22\n");
    yaml.push_str("    odd:\n      children:\n        rack1:\n        rack3:\n        rack5:\n");
    yaml.push_str(
        "    special:\n      hosts:\n        r2-n07:\n          ansible_host: 10.0.0.7\n          ansible_port: 22\n",
    );
    let from_ini = Inventory::load(&write(&dir, "fleet.ini", ini.as_bytes())).unwrap();
    let from_yaml = Inventory::load(&write(&dir, "fleet.yml", yaml.as_bytes())).unwrap();
    assert!(from_ini.notes().is_empty() && from_yaml.notes().is_empty());
    let cases: &[(&[&str], &[&str], usize)] = &[
        (&["@all"], &[], 250),
        (&["@odd"], &[], 150),
        (&["@odd,!@rack3"], &[], 100),
        (&["@all,&@odd"], &["r*-n0*"], 123),
        (&["@rack2"], &["r2-n[01-10]"], 40),
        (&["r2-n07,r9-n01"], &[], 2),
    ];
    for &(words, x, n) in cases {
        let words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        let x: Vec<String> = x.iter().map(|s| s.to_string()).collect();
        let a = select(&words, &x, &Sources { inventory: Some(&from_ini), failed: None }).unwrap();
        let b = select(&words, &x, &Sources { inventory: Some(&from_yaml), failed: None }).unwrap();
        assert_eq!(a, b, "{words:?} -x {x:?}");
        assert_eq!(a.len(), n, "{words:?} -x {x:?}");
    }
    let some =
        select(&["r2-n07,r3-n50,r9-n01".into()], &[], &Sources { inventory: Some(&from_yaml), failed: None }).unwrap();
    let paths: Vec<&str> = some.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths, ["ops@10.0.0.7:22", "ops@r3-n50:2203", "r9-n01"]);
    let labels: Vec<String> = from_ini.group("odd").unwrap().into_iter().map(|h| h.name).collect();
    assert_eq!(spore::range::fold(&labels), "r1-n[01-50],r3-n[01-50],r5-n[01-50]");
}
