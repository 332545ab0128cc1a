//! Every bad config.toml gets one line on stderr that names what is wrong, exit status 2,
//! and leaves the disk as it was (the state directory is not even created).

use std::path::Path;
use std::process::Command;

const GOOD_ADDRESS: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

struct Case {
    name: &'static str,
    /// `None`: no config file at all.
    config: Option<String>,
    /// What the single stderr line must contain.
    expected: &'static str,
}

fn node() -> &'static str {
    "[node]\nid = \"node-a\"\npriority = 1\n"
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "missing file",
            config: None,
            expected: "config.toml: No such file or directory",
        },
        Case {
            name: "bad TOML",
            config: Some(format!("{}[timing\n", node())),
            expected: "config.toml line 4: ",
        },
        Case {
            name: "unknown key",
            config: Some(format!("{}colour = \"blue\"\n", node())),
            expected: "line 4: node.colour: unknown field `colour`",
        },
        Case {
            name: "bad onion address",
            config: Some(format!(
                "{}[[backends]]\nname = \"web1\"\naddress = \"{}\"\n",
                node(),
                GOOD_ADDRESS.replacen("2gzy", "3gzy", 1)
            )),
            expected: "line 6: backends[0].address: bad checksum",
        },
        Case {
            name: "zero interval",
            config: Some(format!("{}[timing]\nhealth_interval_secs = 0\n", node())),
            expected: "timing.health_interval_secs: must be at least 1 second",
        },
        Case {
            name: "unknown Arti key",
            config: Some(format!(
                "{}[arti.tor_network]\nfallback_cache = []\n",
                node()
            )),
            expected: "arti.tor_network.fallback_cache: not a key of Arti's client configuration",
        },
        Case {
            name: "bad priority",
            config: Some("[node]\nid = \"node-a\"\npriority = 0\n".to_owned()),
            expected: "node.priority: priority must be 1 or more",
        },
        Case {
            name: "missing node section",
            config: Some("[timing]\n".to_owned()),
            expected: "missing field `node`",
        },
    ]
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let content = std::fs::read(entry.path()).unwrap_or_default();
            (entry.file_name().to_string_lossy().into_owned(), content)
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn every_bad_config_gets_one_line_naming_the_key_and_exit_2() {
    for case in cases() {
        let root = std::env::temp_dir().join(format!(
            "rb-config-{}-{}",
            std::process::id(),
            case.name.replace(' ', "-")
        ));
        let config_dir = root.join("etc");
        let state_dir = root.join("state");
        std::fs::create_dir_all(&config_dir).unwrap();
        if let Some(text) = &case.config {
            std::fs::write(config_dir.join("config.toml"), text).unwrap();
        }
        let before = snapshot(&config_dir);

        let output = Command::new(env!("CARGO_BIN_EXE_rustbalance"))
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("run")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}: stderr {stderr}",
            case.name
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{}: not one line: {stderr}",
            case.name
        );
        assert!(
            stderr.starts_with("rustbalance: ") && stderr.contains(case.expected),
            "{}: expected {:?} in {stderr}",
            case.name,
            case.expected
        );
        assert_eq!(
            snapshot(&config_dir),
            before,
            "{}: config dir changed",
            case.name
        );
        assert!(!state_dir.exists(), "{}: state dir was created", case.name);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[test]
fn status_and_join_refuse_bad_input_in_one_line_and_change_nothing() {
    let root = std::env::temp_dir().join(format!("rb-refusals-{}", std::process::id()));
    let cases: [(&[&str], i32, &str); 4] = [
        (&["status"], 3, "no rustbalance daemon answers"),
        (&["join", "rb1:e30"], 2, "--endpoint"),
        (
            &["join", "rb1:e30", "--endpoint", "127.0.0.1:51820"],
            2,
            "join token",
        ),
        (
            &["join", "not-a-token", "--endpoint", "127.0.0.1:51820"],
            2,
            "not a RustBalance join token",
        ),
    ];
    for (command, code, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_rustbalance"))
            .arg("--config-dir")
            .arg(root.join("etc"))
            .arg("--state-dir")
            .arg(root.join("state"))
            .args(command)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{command:?}: {stderr}");
        assert!(stderr.contains(expected), "{command:?}: {stderr}");
        assert!(!root.exists(), "{command:?} created files");
    }
}

#[test]
fn help_covers_every_subcommand() {
    let help = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_rustbalance"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let top = help(&["--help"]);
    for command in ["init", "join", "run", "status", "keygen", "token"] {
        assert!(top.contains(command), "--help lacks {command}");
        let sub = help(&[command, "--help"]);
        assert!(
            sub.contains("--config-dir"),
            "{command} --help lacks global options"
        );
    }
}
