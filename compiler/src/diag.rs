//! Diagnostics: every problem the compiler finds, with a stable code, the file and span it points
//! at, and a help line. Every pass reports through one [`Reporter`] (the files read so far and the
//! [`Diagnostics`] list) and keeps going, so the operator sees every error of a policy in one run.
//! **Invariant:** a diagnostic's labels all point into the one file it names.

use miette::{LabeledSpan, NamedSource, Severity, SourceSpan};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// A source file the compiler read: the policy, an include, or a listed file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<String>,
}

impl SourceFile {
    /// 1-based line and column of a byte offset, for JSON output and messages.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// Byte span of line `line` (1-based), without its line end.
    pub fn line_span(&self, line: usize) -> SourceSpan {
        let mut start = 0usize;
        for (index, text) in self.text.split('\n').enumerate() {
            if index + 1 == line {
                return SourceSpan::new(start.into(), text.trim_end_matches('\r').len());
            }
            start += text.len() + 1;
        }
        SourceSpan::new(self.text.len().into(), 0)
    }
}

/// Where an entry was written: a span in a policy file, or a line of a listed file. `file` is
/// an index into the [`Reporter`]'s files.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub file: usize,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy)]
pub enum Pos {
    Span(SourceSpan),
    Line(u32),
}

/// One problem found in a policy.
#[derive(Debug, Clone)]
pub struct Diag {
    /// Stable code, e.g. `mtac::access::contradiction`.
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub source: Option<SourceFile>,
    pub labels: Vec<(SourceSpan, String)>,
    pub help: Option<String>,
}

impl Diag {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diag {
        Diag { code, severity: Severity::Error, message: message.into(), source: None, labels: Vec::new(), help: None }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diag {
        Diag { severity: Severity::Warning, ..Diag::error(code, message) }
    }

    /// Point at `span` of `source` with a label.
    pub fn at(mut self, source: &SourceFile, span: SourceSpan, label: impl Into<String>) -> Diag {
        if self.source.is_none() {
            self.source = Some(source.clone());
        }
        // Labels of a diagnostic must all be in its one source file; a second file is named in the text.
        if self.source.as_ref().is_some_and(|s| Arc::ptr_eq(&s.text, &source.text)) {
            self.labels.push((span, label.into()));
        }
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// A plain, serialisable form for `--format json`.
    pub fn to_json(&self) -> JsonDiag {
        let (file, line, column) = match (&self.source, self.labels.first()) {
            (Some(source), Some((span, _))) => {
                let (line, column) = source.line_col(span.offset());
                (Some(source.name.clone()), Some(line), Some(column))
            }
            (Some(source), None) => (Some(source.name.clone()), None, None),
            _ => (None, None, None),
        };
        JsonDiag {
            code: self.code,
            severity: match self.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Advice => "advice",
            },
            message: self.message.clone(),
            file,
            line,
            column,
            labels: self.labels.iter().map(|(_, l)| l.clone()).collect(),
            help: self.help.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JsonDiag {
    pub code: &'static str,
    pub severity: &'static str,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub labels: Vec<String>,
    pub help: Option<String>,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diag {}

impl miette::Diagnostic for Diag {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| &*s.text as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.labels.iter().map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), *span))))
    }
}

/// Render a diagnostic for a terminal (or a golden file): file name, line, the labelled source.
pub fn render(diag: &Diag, color: bool) -> String {
    let handler = if color {
        miette::GraphicalReportHandler::new()
    } else {
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
    }
    .with_width(100);
    let mut out = String::new();
    let named;
    let report: &dyn miette::Diagnostic = match &diag.source {
        Some(source) => {
            named = WithName { diag, source: NamedSource::new(source.name.clone(), source.text.clone()) };
            &named
        }
        None => diag,
    };
    if handler.render_report(&mut out, report).is_err() {
        out = format!("{}: {}\n", diag.code, diag.message);
    }
    out
}

/// Wraps a diagnostic so miette prints the file name above the snippet.
struct WithName<'a> {
    diag: &'a Diag,
    source: NamedSource<Arc<String>>,
}

impl fmt::Debug for WithName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diag, f)
    }
}

impl fmt::Display for WithName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.diag, f)
    }
}

impl std::error::Error for WithName<'_> {}

impl miette::Diagnostic for WithName<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diag.code()
    }
    fn severity(&self) -> Option<Severity> {
        self.diag.severity()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        miette::Diagnostic::help(self.diag)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.diag.labels()
    }
}

/// The diagnostics of one compilation.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub list: Vec<Diag>,
}

impl Diagnostics {
    pub fn push(&mut self, diag: Diag) {
        self.list.push(diag);
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(Diag::is_error)
    }

    pub fn errors(&self) -> usize {
        self.list.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.list.len() - self.errors()
    }
}

/// Where the passes report: the files read (so an [`Origin`] or a file index becomes a file and
/// a span) and the diagnostics so far. Lowering adds files and reports; validation, the directory
/// export and the relay probe only report.
#[derive(Debug, Default)]
pub struct Reporter {
    pub files: Vec<SourceFile>,
    pub diagnostics: Diagnostics,
}

impl Reporter {
    /// Keep a file read, for diagnostics to point into; returns its index.
    pub fn add_file(&mut self, name: &str, text: String) -> usize {
        self.files.push(SourceFile { name: name.to_owned(), text: Arc::new(text) });
        self.files.len() - 1
    }

    pub fn file(&self, index: usize) -> Option<&SourceFile> {
        self.files.get(index)
    }

    /// The file of index `file` (an empty `<unknown>` for an index no file has: a compiler bug,
    /// which then shows as a diagnostic without a snippet rather than a panic).
    pub fn source(&self, file: usize) -> SourceFile {
        self.files
            .get(file)
            .cloned()
            .unwrap_or_else(|| SourceFile { name: "<unknown>".to_owned(), text: Arc::new(String::new()) })
    }

    pub fn span_of(&self, origin: Origin) -> SourceSpan {
        match origin.pos {
            Pos::Span(span) => span,
            Pos::Line(line) => self.source(origin.file).line_span(line as usize),
        }
    }

    /// `file:line:col` of `origin`, for a help line that points at a second place.
    pub fn describe(&self, origin: Origin) -> String {
        let span = self.span_of(origin);
        match self.file(origin.file) {
            Some(file) => {
                let (line, col) = file.line_col(span.offset());
                format!("{}:{line}:{col}", file.name)
            }
            None => "an earlier line".to_owned(),
        }
    }

    pub fn push(&mut self, diag: Diag) {
        self.diagnostics.push(diag);
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.has_errors()
    }

    /// An error or warning pointing at `origin`.
    pub fn report(&mut self, diag: Diag, origin: Origin, label: &str) {
        let source = self.source(origin.file);
        let span = self.span_of(origin);
        self.push(diag.at(&source, span, label));
    }

    /// An error labelled at `span` of `file`, with `help` unless it is empty.
    pub fn err(&mut self, code: &'static str, message: String, file: usize, span: SourceSpan, label: &str, help: &str) {
        self.push_at(Diag::error(code, message), file, span, label, help);
    }

    /// A warning labelled at `span` of `file`, with `help` unless it is empty.
    pub fn warn(
        &mut self,
        code: &'static str,
        message: String,
        file: usize,
        span: SourceSpan,
        label: &str,
        help: &str,
    ) {
        self.push_at(Diag::warning(code, message), file, span, label, help);
    }

    fn push_at(&mut self, diag: Diag, file: usize, span: SourceSpan, label: &str, help: &str) {
        let source = self.source(file);
        let mut diag = diag.at(&source, span, label);
        if !help.is_empty() {
            diag = diag.help(help);
        }
        self.push(diag);
    }
}

/// The closest known name to `unknown`, for "did you mean" help.
pub fn did_you_mean(unknown: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| (*k).to_owned())
}
