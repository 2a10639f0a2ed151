//! A span-aware walk over a parsed TOML document that collects every problem instead of
//! stopping at the first: admins fix a config in one pass when `check-config` lists all of
//! them, each with file, line and key.
//!
//! A [`Section`] wraps one table. Reading a key marks it used; [`Section::finish`] reports the
//! keys nobody read as unknown, so a typo is never silently ignored.

use std::cell::RefCell;
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

/// The text of one configuration file and the problems found in it so far.
pub struct Source {
    pub path: PathBuf,
    text: String,
    problems: RefCell<Vec<Problem>>,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Self {
        Source {
            path: path.to_owned(),
            text,
            problems: RefCell::new(Vec::new()),
        }
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

    pub fn has_problems(&self) -> bool {
        !self.problems.borrow().is_empty()
    }

    pub fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems.into_inner();
        problems.sort_by_key(|p| (p.line, p.column));
        problems
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
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
        array
            .iter()
            .enumerate()
            .map(|(i, v)| T::from_toml(v).map_err(|e| format!("item {}: {e}", i + 1)))
            .collect()
    }
}

/// One table of the document, with the keys read from it so far.
pub struct Section<'a> {
    source: &'a Source,
    table: &'a dyn TableLike,
    span: Option<Range<usize>>,
    path: String,
    used: RefCell<HashSet<String>>,
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
        }
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

    /// Reads an optional list of strings, converting each with `parse`.
    pub fn parse_list<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        self.get_with(key, |value| {
            let texts = Vec::<String>::from_toml(value)?;
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| parse(t).map_err(|e| format!("item {}: {e}", i + 1)))
                .collect()
        })
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
                .map(|(i, t)| Section::new(self.source, t, t.span(), format!("{name}[{}]", i + 1)))
                .collect(),
            Item::Value(Value::Array(array)) => array
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.as_inline_table() {
                    Some(t) => Some(Section::new(
                        self.source,
                        t,
                        t.span(),
                        format!("{name}[{}]", i + 1),
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

    /// Reports every key of this table that no reader asked for.
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
                self.source
                    .report(span, &self.key_path(key), format!("unknown {what}"));
            }
        }
    }
}
