//! What the packages ship: the production configuration passes check-config, and the systemd
//! unit's exposure stays at or below 2.0 (`systemd-analyze security --offline=yes`).

use std::path::Path;
use std::process::Command;

fn packaging(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(file)
}

#[test]
fn the_shipped_configuration_is_valid() {
    // The files it names (the token key the package makes) exist on an installed host:
    // tests/installed_package.rs runs the full check-config there.
    if let Err(e) = smtprelay::config::Config::load(&packaging("smtprelay.toml")) {
        panic!("{e}");
    }
}

#[test]
fn the_unit_is_hardened() {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(packaging("smtprelay.service"))
        .output()
        .expect("systemd-analyze is needed (Debian package systemd; .ci/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for smtprelay.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
    let unit = std::fs::read_to_string(packaging("smtprelay.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "User=smtprelay",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "StateDirectory=smtprelay",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "ExecReload=/usr/bin/smtprelay check-config --token-key-from-credential --config /etc/smtprelay/smtprelay.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LoadCredential=token-key:/etc/smtprelay/token.key",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
}

#[test]
fn packaging_scripts_are_valid_shell() {
    // Maintainer scripts run under /bin/sh; the build and test scripts are bash.
    for (shell, script) in [
        ("sh", "debian/postinst"),
        ("sh", "debian/postrm"),
        ("sh", "rpm/pre-install.sh"),
        ("sh", "rpm/post-install.sh"),
        ("sh", "rpm/pre-uninstall.sh"),
        ("sh", "rpm/post-uninstall.sh"),
        ("bash", "build.sh"),
        ("bash", "test-install.sh"),
    ] {
        let status = Command::new(shell)
            .arg("-n")
            .arg(packaging(script))
            .status()
            .unwrap();
        assert!(status.success(), "{script} does not parse");
    }
}

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_smtprelay"))
        .arg("generate-docs")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let man = std::fs::read_to_string(dir.path().join("man/smtprelay.1")).unwrap();
    assert!(
        man.contains(".TH smtprelay 1") && man.contains("serve"),
        "{man}"
    );
    for section in ["FILES", "SIGNALS", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"] {
        assert!(
            man.contains(&format!(".SH \"{section}\"")) || man.contains(&format!(".SH {section}")),
            "{section}:\n{man}"
        );
    }
    assert!(man.contains("/etc/smtprelay/token.key"), "{man}");
    // groff warns about non-ASCII input in man pages; every page stays ASCII.
    for page in std::fs::read_dir(dir.path().join("man")).unwrap() {
        let path = page.unwrap().path();
        let text = std::fs::read(&path).unwrap();
        assert!(text.is_ascii(), "{}", path.display());
    }
    let login = std::fs::read_to_string(dir.path().join("man/smtprelay-token-login.1")).unwrap();
    assert!(login.contains("device code"), "{login}");
    for file in ["smtprelay.bash", "_smtprelay", "smtprelay.fish"] {
        let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
        assert!(text.contains("check-config"), "{file}");
    }
}
