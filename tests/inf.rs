//! Checks inf/revcall.inf on any host: the conventions of a root-enumerated Storport virtual
//! miniport INF (docs/STORPORT-NOTES.md §7) and what infverif and PnP expect, parsed rather than
//! pattern-matched.
//!
//! Parsing has two layers. `ini_core` splits the file into sections and lines exactly as written:
//! it keeps duplicate keys and lines without `=` (file lists, AddReg entries) and interprets
//! nothing else (no quotes, escapes or `:` separators). General-purpose INI crates do interpret,
//! and get INF wrong: rust-ini splits `HKR,,Security,,"D:P(A;;GA;;;SY)…"` at the `:` of the SDDL
//! and folds `=`-less lines into the next key; configparser cuts it at the first `;` even inside
//! the quotes and keeps one value per key. [`Inf`] then applies the INF rules of Microsoft's
//! "General Syntax Rules for INF Files": a `;` outside double quotes starts a comment, `""`
//! inside quotes is a quote, a trailing `\` continues the line, fields are comma-separated,
//! section and key names are case-insensitive, sections of the same name merge, and `%token%` is
//! replaced from [Strings] (`%%` is a `%`; a number is a DIRID and stays as written).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const STORAGE_ADAPTER_CLASS_GUID: &str = "{4D36E97B-E325-11CE-BFC1-08002BE10318}";
/// SPSVCINST_ASSOCSERVICE: the service is the device's function driver.
const SPSVCINST_ASSOCSERVICE: u32 = 0x2;
/// FLG_ADDREG_TYPE_DWORD.
const REG_DWORD: u32 = 0x0001_0001;
/// FILE_DEVICE_SECURE_OPEN.
const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;
/// DIRIDs a driver file may be installed to: 13 (run from the driver store), 12 (drivers).
const DRIVER_DIRIDS: [u32; 2] = [13, 12];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One logical INF line: the part before an unquoted `=` (if any) and the comma-separated
/// fields after it, unquoted, trimmed and with `%strings%` substituted.
#[derive(Debug, Clone)]
struct Line {
    key: Option<String>,
    fields: Vec<String>,
}

impl Line {
    fn field(&self, index: usize) -> &str {
        self.fields.get(index).map_or("", String::as_str)
    }

    fn key_is(&self, key: &str) -> bool {
        self.key
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case(key))
    }
}

/// A parsed INF: sections by lower-case name, each the lines of all sections of that name.
struct Inf {
    sections: BTreeMap<String, Vec<Line>>,
}

/// A raw field: its text, and whether any of it was quoted (quoted text is not trimmed).
struct RawLine {
    key: Option<String>,
    fields: Vec<String>,
}

impl Inf {
    fn load() -> Self {
        Self::load_file("revcall.inf")
    }

    /// `inf/<name>`.
    fn load_file(name: &str) -> Self {
        let path = root().join("inf").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Windows reads an INF without a BOM as ANSI: keep it plain ASCII so no code page matters.
        assert!(
            bytes.is_ascii(),
            "{} must be plain ASCII (or saved as UTF-16LE with a BOM)",
            path.display()
        );
        Self::parse(std::str::from_utf8(&bytes).expect("ASCII is UTF-8"))
    }

    fn parse(text: &str) -> Self {
        // Layer 1: sections and physical lines, as ini_core reads them.
        let mut physical: Vec<(String, String)> = Vec::new();
        let mut section: Option<String> = None;
        for item in ini_core::Parser::new(text).comment_char(b';') {
            match item {
                ini_core::Item::Section(name) => section = Some(name.trim().to_ascii_lowercase()),
                ini_core::Item::Property(key, value) => {
                    let line = match value {
                        Some(value) => format!("{key}={value}"),
                        None => key.to_string(),
                    };
                    if strip_comment(&line).trim().is_empty() {
                        continue;
                    }
                    let section = section
                        .clone()
                        .unwrap_or_else(|| panic!("a line before the first section: {line}"));
                    physical.push((section, line));
                }
                ini_core::Item::Error(line) => panic!("malformed section header: {line}"),
                ini_core::Item::Comment(_) | ini_core::Item::Blank | ini_core::Item::SectionEnd => {
                }
            }
        }

        // Layer 2: comments, continuations, fields.
        let mut raw: BTreeMap<String, Vec<RawLine>> = BTreeMap::new();
        let mut pending: Option<(String, String)> = None;
        for (section, line) in physical {
            let code = strip_comment(&line).trim_end().to_string();
            let (section, code) = match pending.take() {
                Some((pending_section, head)) => (pending_section, head + code.trim_start()),
                None => (section, code),
            };
            if let Some(head) = code.strip_suffix('\\') {
                pending = Some((section, head.to_string()));
                continue;
            }
            raw.entry(section).or_default().push(tokenize(&code));
        }
        assert!(pending.is_none(), "the INF ends in a line continuation");

        let strings: BTreeMap<String, String> = raw
            .get("strings")
            .expect("a [Strings] section")
            .iter()
            .map(|line| {
                let key = line.key.clone().expect("[Strings] entries are key = value");
                assert_eq!(line.fields.len(), 1, "[Strings] {key}: one value");
                (key.to_ascii_lowercase(), line.fields[0].clone())
            })
            .collect();
        let sections = raw
            .into_iter()
            .map(|(name, lines)| {
                let lines = lines
                    .into_iter()
                    .map(|line| Line {
                        key: line.key.map(|k| substitute(&k, &strings)),
                        fields: line
                            .fields
                            .iter()
                            .map(|f| substitute(f, &strings))
                            .collect(),
                    })
                    .collect();
                (name, lines)
            })
            .collect();
        Self { sections }
    }

    fn section(&self, name: &str) -> &[Line] {
        self.sections
            .get(&name.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("section [{name}] is missing"))
    }

    fn has_section(&self, name: &str) -> bool {
        self.sections.contains_key(&name.to_ascii_lowercase())
    }

    /// The lines of `section` with `key`.
    fn entries<'a>(&'a self, section: &str, key: &str) -> Vec<&'a Line> {
        self.section(section)
            .iter()
            .filter(|line| line.key_is(key))
            .collect()
    }

    /// The one value of a single-valued directive.
    fn value(&self, section: &str, key: &str) -> &str {
        let entries = self.entries(section, key);
        assert_eq!(entries.len(), 1, "[{section}] {key}: exactly one entry");
        assert_eq!(entries[0].fields.len(), 1, "[{section}] {key}: one value");
        entries[0].field(0)
    }

    /// The install section revcall's hardware id maps to on x64, and the decorated name Windows
    /// picks for it (`.NTamd64`, else `.NT`, else undecorated).
    fn ddinstall(&self) -> String {
        let models = self.models_section();
        let device = self
            .section(&models)
            .iter()
            .find(|line| line.field(1).eq_ignore_ascii_case("root\\revcall"))
            .unwrap_or_else(|| panic!("[{models}] has no root\\revcall hardware id"));
        let base = device.field(0).to_string();
        [".NTamd64", ".NT", ""]
            .iter()
            .map(|decoration| format!("{base}{decoration}"))
            .find(|name| self.has_section(name))
            .unwrap_or_else(|| panic!("no install section for {base}"))
    }

    /// The NTamd64 models section [Manufacturer] points to.
    fn models_section(&self) -> String {
        let manufacturers = self.section("Manufacturer");
        assert_eq!(manufacturers.len(), 1, "one manufacturer");
        let base = manufacturers[0].field(0);
        let decoration = manufacturers[0].fields[1..]
            .iter()
            .find(|d| d.to_ascii_lowercase().starts_with("ntamd64"))
            .expect("[Manufacturer] has an NTamd64 target");
        format!("{base}.{decoration}")
    }

    /// The service-install section of revcall's AddService, and that line.
    fn service(&self) -> (String, Line) {
        let services = format!("{}.Services", self.ddinstall());
        let add = self.entries(&services, "AddService");
        assert_eq!(add.len(), 1, "[{services}] has one AddService");
        (add[0].field(2).to_string(), add[0].clone())
    }

    /// Registry entries (`HKR, subkey, value, flags, data`) of every AddReg section `section`
    /// names.
    fn add_reg(&self, section: &str) -> Vec<&Line> {
        self.entries(section, "AddReg")
            .iter()
            .flat_map(|line| line.fields.iter())
            .flat_map(|name| self.section(name).iter())
            .collect()
    }
}

/// Cuts the comment off a line: a `;` outside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Splits a comment-free logical line into its key (before the first unquoted `=`) and
/// comma-separated fields; quotes are removed (`""` inside quotes is a `"`), unquoted text is
/// trimmed.
fn tokenize(code: &str) -> RawLine {
    let mut key = None;
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut pending_space = String::new();
    let mut quoted = false;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => {
                quoted = !quoted;
                field.push_str(&pending_space);
                pending_space.clear();
            }
            _ if quoted => field.push(c),
            '=' if key.is_none() && fields.is_empty() => {
                key = Some(field.trim().to_string());
                field.clear();
                pending_space.clear();
            }
            ',' => {
                fields.push(field.trim_start().to_string());
                field.clear();
                pending_space.clear();
            }
            c if c.is_ascii_whitespace() => pending_space.push(c),
            c => {
                field.push_str(&pending_space);
                pending_space.clear();
                field.push(c);
            }
        }
    }
    assert!(!quoted, "unterminated quoted string: {code}");
    fields.push(field.trim_start().to_string());
    RawLine { key, fields }
}

/// Replaces `%token%` from [Strings]; `%%` is `%`, `%<number>%` (a DIRID) stays.
fn substitute(text: &str, strings: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('%')
            .unwrap_or_else(|| panic!("unterminated %token% in {text:?}"));
        let token = &after[..end];
        if token.is_empty() {
            out.push('%');
        } else if token.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("%{token}%"));
        } else {
            let value = strings
                .get(&token.to_ascii_lowercase())
                .unwrap_or_else(|| panic!("%{token}% is not defined in [Strings]"));
            out.push_str(value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// An INF number: decimal or 0x-hexadecimal.
fn number(text: &str) -> u32 {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

/// The DIRID and relative path of `%dirid%\path`.
fn dirid_path(text: &str) -> (u32, &str) {
    let rest = text
        .strip_prefix('%')
        .unwrap_or_else(|| panic!("{text:?} does not start with a DIRID"));
    let (dirid, path) = rest
        .split_once("%\\")
        .unwrap_or_else(|| panic!("{text:?} is not %dirid%\\path"));
    (number(dirid), path)
}

#[test]
fn version_declares_a_signed_scsi_adapter_package() {
    let inf = Inf::load();
    assert!(
        inf.value("Version", "Signature")
            .eq_ignore_ascii_case("$Windows NT$")
    );
    assert!(
        inf.value("Version", "Class")
            .eq_ignore_ascii_case("SCSIAdapter")
    );
    assert!(
        inf.value("Version", "ClassGuid")
            .eq_ignore_ascii_case(STORAGE_ADAPTER_CLASS_GUID)
    );
    assert!(
        !inf.value("Version", "Provider").trim().is_empty(),
        "Provider names the publisher"
    );
    assert_eq!(inf.value("Version", "CatalogFile"), "revcall.cat");
    assert_eq!(inf.value("Version", "PnpLockdown"), "1");

    // DriverVer = mm/dd/yyyy,w.x.y.z (stampinf replaces it when packaging).
    let driver_ver = inf.entries("Version", "DriverVer");
    assert_eq!(driver_ver.len(), 1);
    let (date, version) = (driver_ver[0].field(0), driver_ver[0].field(1));
    let date: Vec<u32> = date.split('/').map(number).collect();
    assert!(
        date.len() == 3 && (1..=12).contains(&date[0]) && (1..=31).contains(&date[1]),
        "DriverVer date {date:?}"
    );
    let version: Vec<u32> = version.split('.').map(number).collect();
    assert_eq!(version.len(), 4, "DriverVer version w.x.y.z");
}

#[test]
fn models_install_the_root_enumerated_device_on_amd64() {
    let inf = Inf::load();
    let models = inf.models_section();
    let devices = inf.section(&models);
    assert_eq!(devices.len(), 1, "[{models}]: one device");
    assert!(
        devices[0].field(1).eq_ignore_ascii_case("root\\revcall"),
        "hardware id"
    );
    assert!(
        !devices[0].key.as_deref().unwrap_or("").is_empty(),
        "device description"
    );

    let ddinstall = inf.ddinstall();
    let copy_files = inf.entries(&ddinstall, "CopyFiles");
    assert_eq!(copy_files.len(), 1, "[{ddinstall}] CopyFiles");
    let files = inf.section(copy_files[0].field(0));
    assert!(
        files
            .iter()
            .any(|line| line.field(0).eq_ignore_ascii_case("revcall.sys"))
    );
    assert!(
        inf.section("SourceDisksFiles")
            .iter()
            .any(|line| line.key_is("revcall.sys"))
    );
    assert!(!inf.section("SourceDisksNames").is_empty());
    assert!(inf.has_section(&format!("{ddinstall}.HW")));
}

#[test]
fn service_is_a_kernel_driver_in_the_driver_store() {
    let inf = Inf::load();
    let (install, add_service) = inf.service();
    assert_eq!(add_service.field(0), "revcall", "service name");
    assert_ne!(
        number(add_service.field(1)) & SPSVCINST_ASSOCSERVICE,
        0,
        "AddService flags: SPSVCINST_ASSOCSERVICE (the function driver)"
    );

    assert_eq!(
        number(inf.value(&install, "ServiceType")),
        1,
        "SERVICE_KERNEL_DRIVER"
    );
    assert_eq!(
        number(inf.value(&install, "StartType")),
        3,
        "SERVICE_DEMAND_START: PnP starts it with its devnode"
    );
    assert_eq!(
        number(inf.value(&install, "ErrorControl")),
        1,
        "SERVICE_ERROR_NORMAL"
    );
    assert_eq!(inf.value(&install, "LoadOrderGroup"), "SCSI Miniport");

    let (dirid, file) = dirid_path(inf.value(&install, "ServiceBinary"));
    assert!(
        DRIVER_DIRIDS.contains(&dirid),
        "ServiceBinary DIRID {dirid}"
    );
    assert!(file.eq_ignore_ascii_case("revcall.sys"));
    // The file is copied where the service expects it.
    assert_eq!(
        number(inf.value("DestinationDirs", "DefaultDestDir")),
        dirid
    );
}

#[test]
fn storport_parameters_set_the_virtual_bus_type() {
    let inf = Inf::load();
    let (install, _) = inf.service();
    let bus_type: Vec<_> = inf
        .add_reg(&install)
        .into_iter()
        .filter(|e| e.field(1).eq_ignore_ascii_case("Parameters") && e.field(2) == "BusType")
        .collect();
    assert_eq!(bus_type.len(), 1, "HKR,Parameters,BusType");
    let entry = bus_type[0];
    assert!(entry.field(0).eq_ignore_ascii_case("HKR"));
    assert_eq!(number(entry.field(3)), REG_DWORD);
    assert_eq!(number(entry.field(4)), 0x0E, "BusTypeVirtual");
}

#[test]
fn every_registry_value_the_driver_reads_has_a_default() {
    let inf = Inf::load();
    let (install, _) = inf.service();
    let entries = inf.add_reg(&install);
    let values = registry_values_read_by_the_driver();
    assert!(
        values.contains("EnableFireInjection"),
        "the source scan found {values:?}"
    );
    for name in &values {
        let found: Vec<_> = entries
            .iter()
            .filter(|e| {
                e.field(0).eq_ignore_ascii_case("HKR")
                    && e.field(1).eq_ignore_ascii_case("Parameters\\Device")
                    && e.field(2) == name.as_str()
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name}: one HKR,\"Parameters\\Device\" entry in the service AddReg"
        );
        assert_eq!(number(found[0].field(3)), REG_DWORD, "{name}: REG_DWORD");
    }
}

#[test]
fn device_security_admits_only_system_and_administrators() {
    let inf = Inf::load();
    let hw = format!("{}.HW", inf.ddinstall());
    let entries = inf.add_reg(&hw);
    let security: Vec<_> = entries
        .iter()
        .filter(|e| {
            e.field(0).eq_ignore_ascii_case("HKR")
                && e.field(1).is_empty()
                && e.field(2) == "Security"
        })
        .collect();
    assert_eq!(security.len(), 1, "HKR,,Security in [{hw}]'s AddReg");
    let sddl = security[0].field(4);

    let dacl = sddl
        .strip_prefix("D:")
        .unwrap_or_else(|| panic!("{sddl}: a DACL only"));
    let (flags, aces) = dacl.split_at(dacl.find('(').expect("ACEs"));
    assert!(flags.contains('P'), "{sddl}: protected from inheritance");
    let mut trustees = BTreeSet::new();
    for ace in aces.split_terminator(')') {
        let ace = ace
            .strip_prefix('(')
            .unwrap_or_else(|| panic!("{sddl}: malformed ACE"));
        let parts: Vec<&str> = ace.split(';').collect();
        assert_eq!(
            parts.len(),
            6,
            "{ace}: type;flags;rights;object;inherit;sid"
        );
        assert_eq!(parts[0], "A", "{ace}: an allow ACE");
        trustees.insert(parts[5]);
    }
    assert_eq!(
        trustees,
        BTreeSet::from(["SY", "BA"]),
        "{sddl}: LocalSystem and Administrators, nobody else"
    );

    // The same security for opens of names below the device.
    let characteristics: Vec<_> = entries
        .iter()
        .filter(|e| e.field(2) == "DeviceCharacteristics")
        .collect();
    assert_eq!(characteristics.len(), 1);
    assert_ne!(
        number(characteristics[0].field(4)) & FILE_DEVICE_SECURE_OPEN,
        0
    );
}

#[test]
fn no_absolute_paths() {
    let inf = Inf::load();
    for (section, lines) in &inf.sections {
        for line in lines {
            for text in line.key.iter().chain(&line.fields) {
                let bytes = text.as_bytes();
                let drive = bytes.len() >= 3
                    && bytes[0].is_ascii_alphabetic()
                    && bytes[1] == b':'
                    && matches!(bytes[2], b'\\' | b'/');
                assert!(
                    !drive && !text.starts_with('\\') && !text.starts_with('/'),
                    "[{section}] absolute path {text:?}: use a DIRID"
                );
                // Every path root is a DIRID a driver package may use.
                if let Some(rest) = text.strip_prefix('%') {
                    let (dirid, _) = dirid_path(text);
                    assert!(
                        DRIVER_DIRIDS.contains(&dirid),
                        "[{section}] %{rest}: DIRID {dirid}"
                    );
                }
            }
        }
    }
}

#[test]
fn parser_follows_the_inf_rules() {
    let inf = Inf::parse(
        "[Version]\n\
         Signature = \"$Windows NT$\" ; comment\n\
         [a]\n\
         HKR,,Security,,\"D:P(A;;GA;;;SY)\" ; the ; in quotes is not a comment\n\
         Key = one, \"two, \"\"quoted\"\"\" ,%s%\n\
         Key = again\n\
         bare.sys\n\
         Long = first, \\\n\
             second\n\
         [A]\n\
         Merged = %13%\\x.sys, 100%%\n\
         [Strings]\n\
         S = \"sub value\"\n",
    );
    let a = inf.section("a");
    assert_eq!(a[0].key, None);
    assert_eq!(a[0].fields, ["HKR", "", "Security", "", "D:P(A;;GA;;;SY)"]);
    assert_eq!(a[1].fields, ["one", "two, \"quoted\"", "sub value"]);
    assert_eq!(inf.entries("a", "key").len(), 2, "duplicate keys are kept");
    assert_eq!(a[3].fields, ["bare.sys"]);
    assert_eq!(a[4].fields, ["first", "second"]);
    assert_eq!(a[5].fields, ["%13%\\x.sys", "100%"], "sections merge");
    assert_eq!(inf.value("Version", "Signature"), "$Windows NT$");
}

/// The value names the driver passes to StorPortRegistryRead, found in its source: the
/// second argument of every call, a `c"…"` literal or a `const` holding one. Global reads
/// (third argument 1) are the only kind the INF can give defaults for.
fn registry_values_read_by_the_driver() -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for file in rust_files(&root().join("src")) {
        let source = std::fs::read_to_string(&file).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find("StorPortRegistryRead(") {
            let before = rest[..at].trim_end();
            let args_start = at + "StorPortRegistryRead(".len();
            rest = &rest[args_start..];
            if before.ends_with("fn") {
                continue; // a declaration (the driver's imports are in nt-imports), not a call
            }
            let args = arguments(rest);
            if args.iter().all(|a| a == "_") {
                continue; // a signature written with placeholders (wdk_check.rs), not a call
            }
            assert!(
                args.len() == 6,
                "{}: StorPortRegistryRead with {args:?}",
                file.display()
            );
            assert_eq!(
                args[2],
                "1",
                "{}: only Global reads (Parameters\\Device) can have INF defaults",
                file.display()
            );
            values.insert(c_string(&args[1], &source, &file));
        }
    }
    values
}

/// The top-level, comma-separated arguments of a call whose `(` was just consumed.
fn arguments(text: &str) -> Vec<String> {
    let (mut depth, mut current, mut args) = (0_u32, String::new(), Vec::new());
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        args.push(current.trim().to_string());
    }
    args
}

/// The string of a `c"…"` argument, directly or through the `const` it names.
fn c_string(arg: &str, source: &str, file: &Path) -> String {
    if let Some(literal) = arg.strip_prefix("c\"") {
        return literal[..literal.find('"').unwrap()].to_string();
    }
    let name: String = arg
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let definition = source
        .find(&format!("const {name}:"))
        .unwrap_or_else(|| panic!("{}: no const {name} for a registry value", file.display()));
    let literal = &source[definition..];
    let literal = &literal[literal.find("c\"").expect("a c\"…\" literal") + 2..];
    literal[..literal.find('"').unwrap()].to_string()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// revcall-client.inf: a primitive driver package whose DefaultInstall creates a demand-start
/// kernel service for revcall-client.sys, copied where the service runs it from.
#[test]
fn the_client_inf_installs_a_demand_start_kernel_service() {
    let inf = Inf::load_file("revcall-client.inf");
    assert_eq!(inf.value("Version", "Signature"), "$WINDOWS NT$");
    assert_eq!(inf.value("Version", "CatalogFile"), "revcall-client.cat");
    assert_eq!(number(inf.value("Version", "PnpLockdown")), 1);
    let copies = inf.value("DefaultInstall.NTamd64", "CopyFiles");
    assert!(
        inf.section(copies)
            .iter()
            .any(|line| line.key_is("revcall-client.sys") || line.field(0) == "revcall-client.sys"),
        "[{copies}] copies revcall-client.sys"
    );
    let add = inf.entries("DefaultInstall.NTamd64.Services", "AddService");
    assert_eq!(add.len(), 1, "one AddService");
    assert_eq!(
        add[0].field(0),
        "revcallclient",
        "the service `sc start` names"
    );
    let install = add[0].field(2).to_string();
    assert_eq!(
        number(inf.value(&install, "ServiceType")),
        1,
        "SERVICE_KERNEL_DRIVER"
    );
    assert_eq!(
        number(inf.value(&install, "StartType")),
        3,
        "SERVICE_DEMAND_START"
    );
    let (dirid, file) = dirid_path(inf.value(&install, "ServiceBinary"));
    assert!(file.eq_ignore_ascii_case("revcall-client.sys"));
    assert_eq!(
        number(inf.value("DestinationDirs", "DefaultDestDir")),
        dirid,
        "the image is copied where the service runs it from"
    );
}
