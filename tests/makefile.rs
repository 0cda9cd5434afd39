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

    let (program, args) = command(task(&makefile, "infverif"));
    assert_eq!(program, "infverif");
    assert!(args.iter().any(|a| a.ends_with("revcall.inf")));

    let (program, args) = command(task(&makefile, "inf2cat"));
    assert_eq!(program, "inf2cat");
    assert!(args.contains(&"/os:10_X64"));
    assert!(args.iter().any(|a| a.starts_with("/driver:")));

    let (program, args) = command(task(&makefile, "sign"));
    assert_eq!(program, "signtool");
    assert_eq!(args[0], "sign");
    assert!(args.windows(2).any(|a| a == ["/fd", "SHA256"]));
    for file in ["revcall.sys", "revcall.cat"] {
        assert!(args.iter().any(|a| a.ends_with(file)), "signs {file}");
    }
}

fn script<'a>(makefile: &'a Table, name: &str) -> &'a str {
    let task = task(makefile, name);
    assert_eq!(
        task.get("script_runner").and_then(Value::as_str),
        Some("@duckscript"),
        "[tasks.{name}] is a duckscript (it runs inside cargo-make and can set its environment)"
    );
    task.get("script")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("[tasks.{name}] has a script"))
}

/// The lines of a duckscript that do something (comments dropped).
fn code(script: &str) -> Vec<&str> {
    script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

#[test]
fn the_wdk_tools_are_found_as_wdk_build_finds_them() {
    let makefile = makefile();
    // Every task that runs a WDK or SDK tool puts the kit's directories on PATH first.
    for name in [
        "stampinf",
        "infverif",
        "inf2cat",
        "test-cert",
        "sign",
        "verify-signature",
    ] {
        assert!(
            strings(task(&makefile, name).get("dependencies")).contains(&"wdk-tools-path"),
            "[tasks.{name}] depends on wdk-tools-path"
        );
    }
    let tools = task(&makefile, "wdk-tools-path");
    assert!(windows_only(tools));
    let code = code(script(&makefile, "wdk-tools-path"));
    let has = |text: &str| code.iter().any(|line| line.contains(text));
    // The kit: the EWDK's variable, MicrosoftKitRoot, then the registry.
    for source in [
        "get_env WDKContentRoot",
        "get_env MicrosoftKitRoot",
        "Installed Roots",
        "KitsRoot10",
    ] {
        assert!(has(source), "the kit root comes from {source}");
    }
    // Its version: the EWDK's Version_Number, else the newest under Lib.
    assert!(has("get_env Version_Number") && has("/Lib/10.*"));
    // infverif is in Tools\<version>\<host arch> (not beside stampinf, in bin\<version>\x86).
    assert!(has("get_env WDKToolRoot") && has(r#"tools = set "${root}/Tools""#));
    assert!(has("${tools}/${version}/${arch}"));
    assert!(has("${bin}/${version}/${arch}") && has("${bin}/${version}/x86"));
    assert!(has("ARM64") && has("x64"));
    assert!(
        has(r#"set_env PATH "${found}${path}""#),
        "the directories go first on PATH"
    );
}

#[test]
fn the_test_certificate_is_looked_up_in_the_store_and_signs_by_thumbprint() {
    let makefile = makefile();
    let cert = task(&makefile, "test-cert");
    // Not keyed on the .cer file (which `cargo clean` deletes while the store keeps the
    // certificate): that made a second CN=revcallTestCert, and `signtool /n` then refuses.
    let condition = cert.get("condition").and_then(Value::as_table).unwrap();
    assert!(
        condition.get("files_not_exist").is_none(),
        "test-cert must not key on the .cer: {condition:?}"
    );
    let code = code(script(&makefile, "test-cert"));
    let line = |text: &str| {
        code.iter()
            .position(|line| line.contains(text))
            .unwrap_or_else(|| panic!("test-cert has no line with {text}: {code:#?}"))
    };
    let lookup = line("Cert:/CurrentUser/revcallTestCertStore");
    let make = line("exec --fail-on-error makecert");
    assert!(
        lookup < make,
        "the store is looked at before a certificate is made"
    );
    assert!(code[make - 1].starts_with("if is_empty ${thumbprint}"));
    let makecert = code[make];
    for arg in [
        "-a SHA256",
        "-eku 1.3.6.1.5.5.7.3.3",
        "-ss revcallTestCertStore",
    ] {
        assert!(makecert.contains(arg), "makecert {arg}");
    }
    assert!(makecert.contains("-n CN=revcallTestCert ${cer}"));
    // The package's .cer is the signing certificate, exported whether made now or before.
    let export = line("Export-Certificate");
    assert!(export > make && code[export].contains("${thumbprint}"));
    assert!(line("set_env REVCALL_CERT_SHA1 ${thumbprint}") > export);

    let sign = task(&makefile, "sign");
    assert!(strings(sign.get("dependencies")).contains(&"test-cert"));
    let (_, args) = command(sign);
    assert!(
        args.windows(2)
            .any(|a| a == ["/sha1", "${REVCALL_CERT_SHA1}"])
    );
    assert!(
        !args.contains(&"/n"),
        "by thumbprint, not by a name several may share"
    );
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
