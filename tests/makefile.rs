//! Makefile.toml (cargo-make) parses and names the Windows package flow (docs/WINDOWS.md), and
//! its any-host tasks run the README's commands. Nothing here needs cargo-make or the WDK.

use std::path::PathBuf;

use toml::{Table, Value};

fn read(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn makefile() -> Table {
    read("Makefile.toml")
        .parse()
        .expect("Makefile.toml is valid TOML")
}

fn task<'a>(makefile: &'a Table, name: &str) -> &'a Table {
    makefile["tasks"]
        .get(name)
        .and_then(Value::as_table)
        .unwrap_or_else(|| panic!("Makefile.toml has no [tasks.{name}]"))
}

fn strings(value: Option<&Value>) -> Vec<&str> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn command(task: &Table) -> (&str, Vec<&str>) {
    (
        task.get("command").and_then(Value::as_str).unwrap_or(""),
        strings(task.get("args")),
    )
}

fn windows_only(task: &Table) -> bool {
    task.get("condition")
        .and_then(|c| c.get("platforms"))
        .is_some_and(|p| strings(Some(p)) == ["windows"])
}

#[test]
fn any_host_tasks_run_the_readme_commands() {
    let makefile = makefile();
    let readme = read("README.md");
    for (name, expected) in [
        ("build", "cargo xtask build"),
        ("test", "cargo xtask test"),
        ("run", "cargo xtask run"),
    ] {
        let (program, args) = command(task(&makefile, name));
        let line = format!("{program} {}", args[..2].join(" "));
        assert_eq!(line, expected, "[tasks.{name}]");
        assert!(readme.contains(expected), "the README documents {expected}");
        assert!(
            !windows_only(task(&makefile, name)),
            "{name} runs on any host"
        );
    }
    let default = task(&makefile, "default");
    assert_eq!(default.get("alias").and_then(Value::as_str), Some("build"));
}

#[test]
fn package_runs_the_wdk_tools_in_order() {
    let makefile = makefile();
    let package = task(&makefile, "package");
    let steps = strings(package.get("dependencies"));
    let position = |name: &str| {
        steps
            .iter()
            .position(|s| *s == name)
            .unwrap_or_else(|| panic!("package does not run {name}: {steps:?}"))
    };
    // Built and stamped before the catalog, the catalog before signing.
    assert!(position("build-driver") < position("copy-sys"));
    assert!(position("copy-sys") < position("inf2cat"));
    assert!(position("stampinf") < position("infverif"));
    assert!(position("stampinf") < position("inf2cat"));
    assert!(position("inf2cat") < position("sign"));
    assert!(position("test-cert") < position("sign"));
    for step in &steps {
        let task = task(&makefile, step);
        if *step != "build-driver" {
            assert!(windows_only(task), "{step} is Windows-only");
        }
    }

    let (program, args) = command(task(&makefile, "stampinf"));
    assert_eq!(program, "stampinf");
    assert!(args.windows(2).any(|a| a == ["-c", "revcall.cat"]));
    assert!(args.windows(2).any(|a| a == ["-a", "amd64"]));
    // The copy in the package: stampinf never edits inf/revcall.inf itself.
    assert!(
        args.windows(2)
            .any(|a| a == ["-f", "${PACKAGE_DIR}/revcall.inf"])
    );

    let infverif = task(&makefile, "infverif");
    let (program, args) = command(infverif);
    assert_eq!(program, "infverif");
    // infverif lives in the WDK's Tools\<version>\<arch>, which a build prompt lacks.
    assert_eq!(
        infverif
            .get("dependencies")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(1)
    );
    assert!(
        task(&makefile, "wdk-tools-on-path")
            .get("script")
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains("/Tools/*/x64/infverif.exe"))
    );
    assert!(args.iter().any(|a| a.ends_with("revcall.inf")));

    let (program, args) = command(task(&makefile, "inf2cat"));
    assert_eq!(program, "inf2cat");
    assert!(args.contains(&"/os:10_X64"));
    assert!(args.iter().any(|a| a.starts_with("/driver:")));

    // A new certificate replaces the old one in the store: never two of one name.
    let (program, args) = command(task(&makefile, "test-cert-replace"));
    assert_eq!(
        (program, args.as_slice()),
        (
            "certutil",
            [
                "-user",
                "-delstore",
                "revcallTestCertStore",
                "revcallTestCert"
            ]
            .as_slice()
        )
    );
    let (program, args) = command(task(&makefile, "test-cert"));
    assert_eq!(program, "makecert");
    assert!(args.contains(&"1.3.6.1.5.5.7.3.3"), "code-signing EKU");
    assert!(args.iter().any(|a| a.ends_with(".cer")));

    let (program, args) = command(task(&makefile, "sign"));
    assert_eq!(program, "signtool");
    assert_eq!(args[0], "sign");
    assert!(args.windows(2).any(|a| a == ["/fd", "SHA256"]));
    for file in ["revcall.sys", "revcall.cat"] {
        assert!(args.iter().any(|a| a.ends_with(file)), "signs {file}");
    }
}

#[test]
fn the_package_is_built_with_the_wdk_on_windows() {
    let makefile = makefile();
    let build = task(&makefile, "build-driver");
    assert_eq!(command(build), ("cargo", vec!["xtask", "build"]));
    let windows = build
        .get("windows")
        .and_then(Value::as_table)
        .expect("[tasks.build-driver.windows]");
    let args = strings(windows.get("args"));
    assert!(
        args.windows(2)
            .any(|a| a == ["--target", "x86_64-pc-windows-msvc"])
    );
    assert!(
        args.windows(2)
            .any(|a| a == ["--features", "${REVCALL_FEATURES}"])
    );
    let features = &makefile["env"]["REVCALL_FEATURES"];
    assert_eq!(features["value"].as_str(), Some("wdk"));

    let package_dir = makefile["env"]["PACKAGE_DIR"].as_str().unwrap();
    assert!(package_dir.ends_with("target/x86_64-pc-windows-msvc/release/revcall_package"));
}

#[test]
fn every_dependency_names_a_task() {
    let makefile = makefile();
    for (name, task) in makefile["tasks"].as_table().unwrap() {
        for dependency in strings(task.get("dependencies")) {
            assert!(
                makefile["tasks"].get(dependency).is_some(),
                "[tasks.{name}] depends on unknown task {dependency}"
            );
        }
    }
}
