//! How a command ends: [`Outcome`] when it ran to the end, [`CliError`] when it did not. The
//! reporter ([`CliError::report`], called once, from `cli::run`) prints errors; both pick the
//! exit code (docs/cli.md#exit-codes).

use fleetnix::manifest::ManifestError;
use std::process::ExitCode;

/// What a command found when it ran to the end; the exit code says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report (exit 0).
    Ok,
    /// A problem was found: drift, a failed check, a failed or unhealthy node (exit 1).
    Problem,
    /// `plan`: a deploy would change something (exit 2).
    WouldChange,
}

impl Outcome {
    /// The exit code.
    pub fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Ok => 0,
            Outcome::Problem => 1,
            Outcome::WouldChange => 2,
        })
    }

    /// `Ok` if `ok`, else `Problem`.
    pub fn ok_if(ok: bool) -> Self {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Problem
        }
    }
}

/// Exit code of "could not run" (tailscaled unreachable, …).
pub const EXIT_COULD_NOT_RUN: u8 = 3;

/// Why a command stopped. [`run`] prints it (`error: …` on stderr; manifest problems with
/// their source lines) and picks the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The fleet files could not be read or are invalid (exit 1).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The command failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// The command could not run: what it needs (tailscaled, …) is not there (exit 3).
    #[error("{0}")]
    CouldNotRun(String),
}

impl CliError {
    /// A failure (exit 1) with this message.
    pub fn msg(m: impl std::fmt::Display) -> Self {
        CliError::Failed(m.to_string())
    }

    /// A "could not run" (exit 3) with this message.
    pub fn could_not_run(m: impl std::fmt::Display) -> Self {
        CliError::CouldNotRun(m.to_string())
    }

    /// The exit code.
    pub fn code(&self) -> ExitCode {
        match self {
            CliError::Manifest(_) | CliError::Failed(_) => ExitCode::from(1),
            CliError::CouldNotRun(_) => ExitCode::from(EXIT_COULD_NOT_RUN),
        }
    }

    /// Prints the error on stderr.
    pub fn report(&self) {
        match self {
            CliError::Manifest(e) => report_manifest_error(e),
            CliError::Failed(m) | CliError::CouldNotRun(m) => eprintln!("error: {m}"),
        }
    }
}

impl From<fleetnix::secrets::SecretsError> for CliError {
    fn from(e: fleetnix::secrets::SecretsError) -> Self {
        CliError::msg(e)
    }
}

/// What a command handler returns.
pub type CmdResult = Result<Outcome, CliError>;

/// Prints a manifest error with miette: one diagnostic per problem, each with its source line.
pub fn report_manifest_error(e: &ManifestError) {
    match e {
        ManifestError::Invalid { problems, sources } => {
            for p in problems {
                let text = sources
                    .iter()
                    .find(|(path, _)| *path == p.file)
                    .map(|(_, t)| t.as_str())
                    .unwrap_or_default();
                // Only the lines around the problem, clipped: a 1 MB line is not printed whole.
                let snippet = p.snippet(text);
                let (offset, len) = snippet.span;
                // One grep-friendly line, then the source snippet.
                eprintln!("error: {p}");
                let clip = |s: &str| {
                    fleetnix::manifest::diag::clip_middle(
                        s,
                        fleetnix::manifest::diag::MESSAGE_CHARS,
                    )
                    .into_owned()
                };
                let diag = miette::MietteDiagnostic::new(clip(&p.message))
                    .with_code("fleetnix::manifest")
                    .with_label(miette::LabeledSpan::at(
                        offset..offset + len,
                        p.expected
                            .as_deref()
                            .map(|e| format!("expected {}", clip(e)))
                            .unwrap_or_else(|| clip(&p.message)),
                    ));
                let report = miette::Report::new(diag).with_source_code(ClippedSource {
                    name: p.file.display().to_string(),
                    snippet,
                });
                eprintln!("{report:?}");
            }
            eprintln!(
                "error: {} problem(s) in the fleet files; nothing was written",
                problems.len()
            );
        }
        other => eprintln!("error: {other}"),
    }
}

/// A problem's [`Snippet`](fleetnix::manifest::diag::Snippet) as miette's source: lines and
/// columns are the file's, though only the clipped lines around the problem are held.
#[derive(Debug)]
struct ClippedSource {
    name: String,
    snippet: fleetnix::manifest::diag::Snippet,
}

impl miette::SourceCode for ClippedSource {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let c = self.snippet.text.as_str().read_span(span, before, after)?;
        let column = if c.line() == self.snippet.problem_line {
            usize::try_from(c.column() as isize + self.snippet.column_shift).unwrap_or(0)
        } else {
            c.column()
        };
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            c.data(),
            *c.span(),
            c.line() + self.snippet.first_line,
            column,
            c.line_count(),
        )))
    }
}
