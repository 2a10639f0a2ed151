//! A span-aware walk over a parsed TOML document that collects every problem instead of
//! stopping at the first: admins fix a config in one pass when `check-config` lists all of
//! them, each with file, line and key.
//!
//! A [`Section`] wraps one table. Reading a key marks it used; [`Section::finish`] reports the
//! keys nobody read as unknown, so a typo is never silently ignored.

use std::cell::{OnceCell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key, e.g. `listen[2].tls`; empty for file-level problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A file the configuration names for the relay to read (a secret, a key, a certificate),
/// with where it is named: `check-config` makes sure the service can read each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub key: String,
    pub line: usize,
    pub column: usize,
    pub path: PathBuf,
    pub kind: InputKind,
}

/// What a named file is, where that changes how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    File,
    /// The token store key: `smtprelay token keygen` makes it, and the service may get it
    /// as a systemd credential or from the environment instead of reading the file.
    TokenKey,
    /// A secret (a client secret, a private key): only its owner and group should read it,
    /// and the relay warns at start when others can.
    Secret,
}

/// The text of one configuration file and the problems found in it so far.
pub struct Source {
    pub path: PathBuf,
    text: String,
    problems: RefCell<Vec<Problem>>,
    inputs: RefCell<Vec<InputFile>>,
    /// Where each line starts, found once: positions are looked up per problem, and a file
    /// with many problems must not be read again for each.
    line_starts: OnceCell<Vec<usize>>,
    /// Every key the reader asked for, as `table.key` without list positions or names
    /// (`account.upstream.host`): what the configuration accepts, which the reference
    /// documentation is checked against.
    asked: RefCell<std::collections::BTreeSet<String>>,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Self {
        Source {
            path: path.to_owned(),
            text,
            problems: RefCell::new(Vec::new()),
            inputs: RefCell::new(Vec::new()),
            line_starts: OnceCell::new(),
            asked: RefCell::new(std::collections::BTreeSet::new()),
        }
    }

    /// The keys asked for so far (see `asked`).
    pub fn asked(&self) -> std::collections::BTreeSet<String> {
        self.asked.borrow().clone()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Directory that relative paths in this file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    pub fn report(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (line, column) = span.map_or((0, 0), |s| self.line_column(s.start));
        self.problems.borrow_mut().push(Problem {
            file: self.path.clone(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The files the configuration names for reading, in the order they were read.
    pub fn inputs(&self) -> Vec<InputFile> {
        self.inputs.borrow().clone()
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.borrow().is_empty()
    }

    pub fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems.into_inner();
        problems.sort_by_key(|p| (p.line, p.column));
        problems
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(memchr::memchr_iter(b'\n', self.text.as_bytes()).map(|i| i + 1))
                .collect()
        });
        let offset = offset.min(self.text.len());
        // The last line start at or before the offset.
        let line = starts.partition_point(|&start| start <= offset);
        (line, offset - starts[line - 1] + 1)
    }
}

/// Conversion from a TOML value, with a message for the admin when it does not fit.
pub trait FromToml: Sized {
    fn from_toml(value: &Value) -> Result<Self, String>;
}

impl FromToml for String {
    fn from_toml(value: &Value) -> Result<Self, String> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("expected a string, found {}", value.type_name()))
    }
}

impl FromToml for bool {
    fn from_toml(value: &Value) -> Result<Self, String> {
        value
            .as_bool()
            .ok_or_else(|| format!("expected true or false, found {}", value.type_name()))
    }
}

macro_rules! integer_from_toml {
    ($($t:ty),*) => {$(
        impl FromToml for $t {
            fn from_toml(value: &Value) -> Result<Self, String> {
                let n = value
                    .as_integer()
                    .ok_or_else(|| format!("expected a whole number, found {}", value.type_name()))?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range for this key"))
            }
        }
    )*};
}
integer_from_toml!(u16, u32, u64, usize);

impl<T: FromToml> FromToml for Vec<T> {
    fn from_toml(value: &Value) -> Result<Self, String> {
        let array = value
            .as_array()
            .ok_or_else(|| format!("expected a list, found {}", value.type_name()))?;
        let mut items = Vec::with_capacity(array.len());
        let mut errors = Vec::new();
        for (i, v) in array.iter().enumerate() {
            match T::from_toml(v) {
                Ok(item) => items.push(item),
                Err(e) => errors.push(format!("item {}: {e}", i + 1)),
            }
        }
        // Every bad item is named, not only the first.
        if errors.is_empty() {
            Ok(items)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// One table of the document, with the keys read from it so far.
pub struct Section<'a> {
    source: &'a Source,
    table: &'a dyn TableLike,
    span: Option<Range<usize>>,
    path: String,
    used: RefCell<HashSet<String>>,
    /// Keys whose value could not be read: checks that combine keys leave them alone, so
    /// one mistake gives one error.
    broken: RefCell<HashSet<String>>,
}

impl<'a> Section<'a> {
    pub fn new(
        source: &'a Source,
        table: &'a dyn TableLike,
        span: Option<Range<usize>>,
        path: String,
    ) -> Self {
        Section {
            source,
            table,
            span,
            path,
            used: RefCell::new(HashSet::new()),
            broken: RefCell::new(HashSet::new()),
        }
    }

    /// None of `keys` had a value that could not be read (absent keys are intact).
    pub fn intact(&self, keys: &[&str]) -> bool {
        let broken = self.broken.borrow();
        keys.iter().all(|key| !broken.contains(*key))
    }

    pub fn source(&self) -> &'a Source {
        self.source
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn lookup(&self, key: &str) -> Option<(&'a toml_edit::Key, &'a Item)> {
        self.used.borrow_mut().insert(key.to_owned());
        self.source
            .asked
            .borrow_mut()
            .insert(without_positions(&self.key_path(key)));
        self.table.get_key_value(key)
    }

    /// Reports a problem at `key` (or at the table when the key is absent).
    pub fn report(&self, key: &str, message: impl Into<String>) {
        let span = self
            .table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .or_else(|| self.span.clone());
        self.source.report(span, &self.key_path(key), message);
    }

    /// Reads an optional plain value.
    pub fn get<T: FromToml>(&self, key: &str) -> Option<T> {
        self.get_with(key, T::from_toml)
    }

    /// Reads an optional value, reporting a missing one as a problem.
    pub fn require<T: FromToml>(&self, key: &str) -> Option<T> {
        if self.table.get(key).is_none() {
            self.report(key, "this key is required");
            self.broken.borrow_mut().insert(key.to_owned());
            return None;
        }
        self.get(key)
    }

    /// Reads an optional string and converts it with `parse`.
    pub fn parse<T>(&self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        self.get_with(key, |value| {
            let text = String::from_toml(value)?;
            parse(&text)
        })
    }

    /// Reads an optional list of strings, converting each with `parse`. Every bad item is
    /// reported where it stands.
    pub fn parse_list<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let array = self.get_with(key, |value| {
            value
                .as_array()
                .cloned()
                .ok_or_else(|| format!("expected a list, found {}", value.type_name()))
        })?;
        let mut items = Vec::with_capacity(array.len());
        let mut sound = true;
        for (i, value) in array.iter().enumerate() {
            let item = String::from_toml(value).and_then(|text| parse(&text));
            match item {
                Ok(item) => items.push(item),
                Err(e) => {
                    sound = false;
                    self.source.report(
                        value.span().or_else(|| self.span_of(key)),
                        &self.key_path(key),
                        format!("item {}: {e}", i + 1),
                    );
                }
            }
        }
        if !sound {
            self.broken.borrow_mut().insert(key.to_owned());
        }
        sound.then_some(items)
    }

    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .or_else(|| self.span.clone())
    }

    /// Reads a path to a file the relay will read (see [`InputFile`]).
    pub fn input_file(&self, key: &str) -> Option<PathBuf> {
        let path = self.path(key)?;
        self.note_input(key, &path, InputKind::File);
        Some(path)
    }

    /// [`Self::input_file`] for a file of a particular kind.
    pub fn input_file_of(&self, key: &str, kind: InputKind) -> Option<PathBuf> {
        let path = self.path(key)?;
        self.note_input(key, &path, kind);
        Some(path)
    }

    /// [`Self::optional_path`] for a file the relay will read.
    pub fn optional_input_file(&self, key: &str) -> Option<PathBuf> {
        let path = self.optional_path(key)?;
        self.note_input(key, &path, InputKind::File);
        Some(path)
    }

    /// [`Self::require_path`] for a file the relay will read.
    pub fn require_input_file(&self, key: &str) -> Option<PathBuf> {
        let path = self.require_path(key)?;
        self.note_input(key, &path, InputKind::File);
        Some(path)
    }

    fn note_input(&self, key: &str, path: &Path, kind: InputKind) {
        let (line, column) = self
            .span_of(key)
            .map_or((0, 0), |span| self.source.line_column(span.start));
        self.source.inputs.borrow_mut().push(InputFile {
            key: self.key_path(key),
            line,
            column,
            path: path.to_owned(),
            kind,
        });
    }

    /// Reads an optional path; a relative path is taken relative to the config file.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        let base = self.source.base_dir();
        self.parse(key, |text| {
            if text.is_empty() {
                return Err("a path may not be empty (remove the key instead)".into());
            }
            Ok(base.join(text))
        })
    }

    /// Reads a path that must be present.
    pub fn require_path(&self, key: &str) -> Option<PathBuf> {
        if self.table.get(key).is_none() {
            self.report(key, "this key is required");
            self.broken.borrow_mut().insert(key.to_owned());
            return None;
        }
        self.path(key)
    }

    /// Reads a path where an empty string means "none", as the reference writes `ca_file = ""`.
    pub fn optional_path(&self, key: &str) -> Option<PathBuf> {
        let base = self.source.base_dir();
        self.parse(key, |text| Ok((!text.is_empty()).then(|| base.join(text))))
            .flatten()
    }

    fn get_with<T>(&self, key: &str, convert: impl Fn(&Value) -> Result<T, String>) -> Option<T> {
        let (k, item) = self.lookup(key)?;
        let result = match item {
            Item::Value(value) => convert(value),
            Item::Table(_) => Err("expected a value, found a table".into()),
            Item::ArrayOfTables(_) => Err("expected a value, found an array of tables".into()),
            Item::None => return None,
        };
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                let span = item.span().or_else(|| k.span());
                self.source.report(span, &self.key_path(key), message);
                self.broken.borrow_mut().insert(key.to_owned());
                None
            }
        }
    }

    /// The sub-table at `key`, if present.
    pub fn table(&self, key: &str) -> Option<Section<'a>> {
        let (k, item) = self.lookup(key)?;
        match item.as_table_like() {
            Some(table) => Some(Section::new(
                self.source,
                table,
                item.span().or_else(|| k.span()),
                self.key_path(key),
            )),
            None => {
                self.report(key, format!("expected a table, found {}", item.type_name()));
                None
            }
        }
    }

    /// The tables of an array of tables (`[[listen]]`), numbered from 1 in key paths.
    pub fn tables(&self, key: &str) -> Vec<Section<'a>> {
        let Some((k, item)) = self.lookup(key) else {
            return Vec::new();
        };
        let name = self.key_path(key);
        match item {
            Item::ArrayOfTables(array) => array
                .iter()
                .enumerate()
                .map(|(i, t)| Section::new(self.source, t, t.span(), entry_path(&name, i, t)))
                .collect(),
            Item::Value(Value::Array(array)) => array
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.as_inline_table() {
                    Some(t) => Some(Section::new(
                        self.source,
                        t,
                        t.span(),
                        entry_path(&name, i, t),
                    )),
                    None => {
                        self.source
                            .report(v.span(), &name, "expected a list of tables");
                        None
                    }
                })
                .collect(),
            _ => {
                self.source.report(
                    item.span().or_else(|| k.span()),
                    &name,
                    format!("expected [[{key}]] tables, found {}", item.type_name()),
                );
                Vec::new()
            }
        }
    }

    /// Reports every key of this table that no reader asked for, with the known key it
    /// most likely meant.
    pub fn finish(self) {
        let used = self.used.take();
        for (key, item) in self.table.iter() {
            if !used.contains(key) {
                let span = self
                    .table
                    .get_key_value(key)
                    .and_then(|(k, _)| k.span())
                    .or_else(|| item.span());
                let what = if self.path.is_empty() { "table" } else { "key" };
                let hint = did_you_mean(key, used.iter().map(String::as_str))
                    .map_or(String::new(), |known| format!("; did you mean {known:?}?"));
                self.source
                    .report(span, &self.key_path(key), format!("unknown {what}{hint}"));
            }
        }
    }
}

/// `listen[2]`, or `account[contoso]` for a table with a name: admins know their accounts
/// by name, not by position.
fn entry_path(array: &str, index: usize, table: &dyn TableLike) -> String {
    match table.get("name").and_then(Item::as_str) {
        Some(name) if !name.is_empty() => format!("{array}[{name}]"),
        _ => format!("{array}[{}]", index + 1),
    }
}

/// The candidate closest to `word`, if it is close enough to be a slip: the same word in
/// another case, or a few letters off.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .map(|candidate| {
            let distance = strsim::levenshtein(&lower, &candidate.to_ascii_lowercase());
            (distance, candidate)
        })
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
        .min_by_key(|(distance, candidate)| (*distance, *candidate))
        .map(|(_, candidate)| candidate)
}

/// `account[contoso].upstream.host` → `account.upstream.host`.
fn without_positions(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}
