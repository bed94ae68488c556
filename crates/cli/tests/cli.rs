//! The `strongroom` binary as an operator uses it: first start, `init`,
//! `health`, and refusals of bad set-ups with messages that say what to do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_strongroom");

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STRONGROOM_LISTEN", "127.0.0.1:0")
            .env("STRONGROOM_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn password_file(&self, pw: &str) -> String {
        let p = self.path("master.pw");
        std::fs::write(&p, format!("{pw}\n")).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Starts `serve` and returns once it says where it listens.
    fn serve(&self, extra_env: &[(&str, &str)]) -> (Child, String, Vec<String>) {
        let mut cmd = self.cmd();
        cmd.arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let mut url = None;
        // Start-up messages end with the "listening on" line.
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                url = Some(rest.split_whitespace().next().unwrap().to_owned());
            }
            lines.push(line);
            if url.is_some() {
                break;
            }
        }
        (child, url.expect("server printed its address"), lines)
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status:?} on SIGTERM");
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_then_init_then_health() {
    let s = Setup::new();
    let (child, url, lines) = s.serve(&[]);
    let all = lines.join("\n");
    assert!(all.contains("Created the master key"), "{all}");
    assert!(all.contains("self-signed TLS certificate"), "{all}");
    assert!(all.contains("The store is empty"), "{all}");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(mode(&s.path("strongroom-keys")), 0o700);
    assert_eq!(mode(&s.path("strongroom-keys/master.key")), 0o600);
    assert_eq!(mode(&s.path("strongroom-data")), 0o700);
    assert!(s.path("strongroom-data/strongroom.db").exists());
    assert!(s.path("strongroom-data/tls/cert.pem").exists());

    let h = s.run(&["health", "--url", &url]);
    assert!(h.status.success(), "{}", text(&h));
    assert!(text(&h).starts_with("ok"), "{}", text(&h));

    // init works while the server runs (SQLite WAL allows it).
    let pw = s.password_file("plum orchard violin tram");
    let o = s.run(&[
        "init",
        "--company",
        "acme",
        "--company-name",
        "Acme Ltd",
        "--admin",
        "master",
        "--admin-password-file",
        &pw,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Created company ACME"), "{}", text(&o));

    // The same code again is refused, clearly.
    let o = s.run(&[
        "init",
        "--company",
        "ACME",
        "--company-name",
        "Again",
        "--admin-password-file",
        &pw,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    stop(child);

    // A second start finds the key and certificate and does not say the store is empty.
    let (child, _, lines) = s.serve(&[]);
    let all = lines.join("\n");
    assert!(!all.contains("Created the master key"), "{all}");
    assert!(!all.contains("The store is empty"), "{all}");
    stop(child);
}

#[test]
fn init_refuses_weak_or_missing_passwords() {
    let s = Setup::new();
    let pw = s.password_file("short");
    let o = s.run(&[
        "init",
        "--company",
        "ACME",
        "--company-name",
        "Acme",
        "--admin-password-file",
        &pw,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("at least 12 characters"), "{}", text(&o));

    // No file and no terminal: say how to give the password.
    let o = s.run(&["init", "--company", "ACME", "--company-name", "Acme"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--admin-password-file"), "{}", text(&o));

    let o = s.run(&[
        "init",
        "--company",
        "A C",
        "--company-name",
        "Acme",
        "--admin-password-file",
        &pw,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("company code"), "{}", text(&o));
}

#[test]
fn bad_setups_stop_start_up_with_a_fix() {
    let s = Setup::new();
    // Unknown key in the config file.
    std::fs::write(s.path("bad.toml"), "lisen = \"0.0.0.0:1\"\n").unwrap();
    let o = s.run(&["--config", "bad.toml", "serve"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("lisen"), "{}", text(&o));

    // A bad value from the environment names its key.
    let o = s
        .cmd()
        .arg("serve")
        .env("STRONGROOM_MAX_BODY_BYTES", "lots")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("STRONGROOM_MAX_BODY_BYTES"),
        "{}",
        text(&o)
    );

    // The key directory inside the data directory.
    let o = s
        .cmd()
        .arg("serve")
        .env("STRONGROOM_KEY_DIR", "strongroom-data/keys")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("must be apart"), "{}", text(&o));

    // A master key file others can read.
    let (child, _, _) = s.serve(&[]);
    stop(child);
    std::fs::set_permissions(
        s.path("strongroom-keys/master.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = s.run(&["serve"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));

    // A secret given two ways.
    let o = s
        .cmd()
        .arg("serve")
        .env("STRONGROOM_DATABASE_URL", "x.db")
        .env("STRONGROOM_DATABASE_URL_FILE", "y")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("both"), "{}", text(&o));
}

#[test]
fn openapi_is_printed_offline() {
    let s = Setup::new();
    let o = s.run(&["openapi"]);
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

#[test]
fn keys_status_rotate_and_company_deletion() {
    let s = Setup::new();
    let pw = s.password_file("plum orchard violin tram");
    for code in ["ACME", "BETA"] {
        let o = s.run(&[
            "init",
            "--company",
            code,
            "--company-name",
            code,
            "--admin-password-file",
            &pw,
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = s.run(&["keys", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("Master key: key file"), "{t}");
    for line in [
        "ACME         data",
        "ACME         index",
        "ACME         audit_signing",
        "BETA         data",
    ] {
        assert!(t.contains(line), "missing {line:?} in\n{t}");
    }
    assert!(
        !t.contains("strongroom-master-key"),
        "key material printed:\n{t}"
    );

    let o = s.run(&["keys", "rotate", "--company", "acme"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("now writes with data key v2"),
        "{}",
        text(&o)
    );
    let t = text(&s.run(&["keys", "status"]));
    assert!(
        t.lines().any(|l| l.starts_with("ACME")
            && l.contains("data")
            && l.contains(" 2 ")
            && l.contains("active")),
        "{t}"
    );
    assert!(
        t.lines().any(|l| l.starts_with("ACME")
            && l.contains("data")
            && l.contains(" 1 ")
            && l.contains("retired")),
        "{t}"
    );

    // A backup made before a master-key rotation is named as lost by it.
    let o = s.run(&["backup", "create"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.run(&["keys", "rotate-master"]);
    assert!(o.status.success(), "{}", text(&o));
    // Seven company keys and the installation's backup-signing key.
    assert!(text(&o).contains("Re-wrapped 8 keys"), "{}", text(&o));
    assert!(
        text(&o).contains("the 1 backup(s) in") && text(&o).contains("can no longer be restored"),
        "{}",
        text(&o)
    );

    let o = s.run(&["delete-company", "--company", "BETA"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--yes-delete-everything"), "{}", text(&o));
    let o = s.run(&[
        "delete-company",
        "--company",
        "BETA",
        "--yes-delete-everything",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&s.run(&["keys", "status"]));
    assert!(!t.contains("BETA"), "{t}");
    assert!(t.contains("ACME"), "{t}");

    // Operator actions are in the audit log, and the log verifies.
    let o = s.run(&["audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("ACME: 2 events, 0 signed checkpoints: intact"),
        "{t}"
    );
    assert!(t.contains("(deleted): 1 events"), "{t}");
    // The backup, the master-key rotation and the deletion.
    assert!(t.contains("(server): 3 events"), "{t}");
    let o = s.run(&["audit", "verify", "--company", "NOPE"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("there is no company NOPE"),
        "{}",
        text(&o)
    );
}

#[test]
fn audit_export_and_archive() {
    let s = Setup::new();
    let pw = s.password_file("plum orchard violin tram");
    let o = s.run(&[
        "init",
        "--company",
        "ACME",
        "--company-name",
        "Acme",
        "--admin-password-file",
        &pw,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(s
        .run(&["keys", "rotate", "--company", "ACME"])
        .status
        .success());

    for (format, starts) in [
        ("jsonl", "{"),
        ("syslog", "<110>1 "),
        ("cef", "CEF:0|Strongroom|"),
    ] {
        let o = s.run(&["audit", "export", "--company", "ACME", "--format", format]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines.iter().all(|l| l.starts_with(starts)),
            "{format}: {out}"
        );
    }
    let o = s.run(&["audit", "export", "--format", "xml"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("jsonl, syslog or cef"));

    // An event changed outside Strongroom stays in the live log: the
    // archive refuses, and moves nothing.
    let db = rusqlite::Connection::open(s.path("strongroom-data/strongroom.db")).unwrap();
    let set_time = |sql: &str| {
        let n = db
            .execute(
                &format!("UPDATE audit_events SET at = {sql} WHERE action = 'company.create'"),
                [],
            )
            .unwrap();
        assert_eq!(n, 1);
    };
    set_time("'yesterday ' || at");
    let archive = |out: &str| {
        s.run(&[
            "audit",
            "archive",
            "--company",
            "ACME",
            "--before",
            "2999-01-01T00:00:00Z",
            "--out",
            out,
        ])
    };
    let o = archive("refused.jsonl");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("audit event 1 of ACME was changed outside Strongroom (its time is not a number); nothing was archived"),
        "{}",
        text(&o)
    );
    assert!(!s.path("refused.jsonl").exists());
    set_time("CAST(substr(at, 11) AS INTEGER)");

    // Archive everything so far; the live log keeps an anchor.
    let o = archive("acme.jsonl");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Archived events 1..2"), "{}", text(&o));
    let o = archive("acme.jsonl");
    assert!(
        !o.status.success(),
        "an existing archive must never be overwritten"
    );
    let o = s.run(&["audit", "verify", "--company", "ACME"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.run(&[
        "audit",
        "verify",
        "--company",
        "ACME",
        "--archive",
        "acme.jsonl",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("ACME: 3 events"),
        "archive and live together: {}",
        text(&o)
    );

    // A changed archive is caught.
    let path = s.path("acme.jsonl");
    let tampered =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen("company.create", "company.creatE", 1);
    std::fs::write(&path, tampered).unwrap();
    let o = s.run(&[
        "audit",
        "verify",
        "--company",
        "ACME",
        "--archive",
        "acme.jsonl",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("in the archive: event 1 was changed"),
        "{}",
        text(&o)
    );
}

#[test]
fn backup_verify_restore_and_drill_from_the_command_line() {
    let s = Setup::new();
    let pw = s.password_file("plum orchard violin tram");
    let o = s.run(&[
        "init",
        "--company",
        "ACME",
        "--company-name",
        "Acme",
        "--admin-password-file",
        &pw,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // A server runs meanwhile: the backup is taken while it serves.
    let (child, _, _) = s.serve(&[]);
    let o = s.run(&["backup", "create"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let id = out.split_whitespace().nth(1).unwrap_or_default().to_owned();
    assert!(out.starts_with("Backup "), "{out}");
    let o = s.run(&["backup", "list"]);
    assert!(text(&o).contains(&id), "{}", text(&o));
    let key = out
        .split("Signed by backup-signing key ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_hexdigit()).next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(key.len(), 64, "{out}");
    let o = s.run(&["backup", "verify", &id]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("intact"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("this installation's backup-signing key {key}")),
        "{}",
        text(&o)
    );
    // An auditor with the public key alone: no key directory at all.
    let auditor = |key: &str| {
        s.cmd()
            .env("STRONGROOM_KEY_DIR", s.path("no-such-keys"))
            .args(["backup", "verify", &id, "--public-key", key])
            .output()
            .unwrap()
    };
    let o = auditor(&key);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("not decrypted"), "{}", text(&o));
    let o = auditor(&"ab".repeat(32));
    assert!(!o.status.success());
    assert!(text(&o).contains("not by the pinned key"), "{}", text(&o));
    let o = s.run(&["drill"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("passed"), "{}", text(&o));
    stop(child);
    let o = s.run(&["restore", &id, "--into", "restored"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(s.path("restored/strongroom.db").exists());
    // Not twice into the same store.
    let o = s.run(&["restore", &id, "--into", "restored"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not empty"), "{}", text(&o));
    // In one transaction, on request.
    let o = s.run(&["restore", &id, "--into", "restored-atomic", "--atomic"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s
        .cmd()
        .env(
            "STRONGROOM_DATABASE_URL",
            s.path("restored-atomic/strongroom.db"),
        )
        .args(["audit", "verify", "--company", "ACME"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // A bad id says what to do.
    let o = s.run(&["backup", "verify", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no backup nope"), "{}", text(&o));
}

#[test]
fn a_backup_killed_midway_never_looks_complete() {
    let s = Setup::new();
    let pw = s.password_file("plum orchard violin tram");
    let o = s.run(&[
        "init",
        "--company",
        "ACME",
        "--company-name",
        "Acme",
        "--admin-password-file",
        &pw,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for delay_ms in [0u64, 5, 20, 60, 150] {
        let mut child = s.cmd().args(["backup", "create"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Whatever got as far as being listed is a whole, verifiable backup.
    let o = s.run(&["backup", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some(id) = line.split_whitespace().next() else {
            continue;
        };
        if line.starts_with("No backups") || line.starts_with("drill") {
            continue;
        }
        let v = s.run(&["backup", "verify", id]);
        assert!(
            v.status.success(),
            "listed backup {id} does not verify: {}",
            text(&v)
        );
    }
    // And a backup after all that works.
    let o = s.run(&["backup", "create"]);
    assert!(o.status.success(), "{}", text(&o));
    let id = text(&o)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();

    // A restore killed at any moment leaves either a complete store or one
    // that every command refuses until the same restore, run again,
    // finishes it.
    for (n, delay_ms) in [0u64, 10, 30, 80, 200].into_iter().enumerate() {
        let into = format!("restored-{n}");
        let mut child = s
            .cmd()
            .args(["restore", &id, "--into", &into])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let on_it = |args: &[&str]| {
            s.cmd()
                .env(
                    "STRONGROOM_DATABASE_URL",
                    s.path(&format!("{into}/strongroom.db")),
                )
                .args(args)
                .output()
                .unwrap()
        };
        let status = on_it(&["keys", "status"]);
        if !status.status.success() {
            let why = text(&status);
            assert!(
                why.contains("interrupted restore")
                    || !s.path(&format!("{into}/strongroom.db")).exists(),
                "{why}"
            );
            let o = s.run(&["restore", &id, "--into", &into]);
            assert!(o.status.success(), "resuming: {}", text(&o));
        } else {
            // It had finished (then running it again is refused, not
            // repeated), or had not begun to load (then it runs whole).
            let o = s.run(&["restore", &id, "--into", &into]);
            assert!(
                o.status.success() || text(&o).contains("not empty"),
                "{}",
                text(&o)
            );
        }
        let o = on_it(&["audit", "verify", "--company", "ACME"]);
        assert!(o.status.success(), "{into}: {}", text(&o));
    }
}
