//! Interactive prompts on the terminal: one line of input, validated as it is typed.
//!
//! Everything here writes to **stderr** (stdout stays clean for `-o json`), and only runs
//! when stdin and stderr are terminals ([`is_interactive`]). Input is read in raw mode
//! (crossterm); a guard restores the terminal when the prompt ends, however it ends
//! (return, error, panic). See `rfc/007-params-and-wizard.md`.
//!
//! The line editor itself ([`Editor`]) is a pure state machine over key events, so its
//! behaviour is unit-tested without a terminal; [`read_line`] drives it on the real one.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::Stylize;
use crossterm::{cursor, queue, terminal};

use crate::desired::Prompter;
use crate::input::clawspec::{Param, Validator};

/// Why a prompt did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The person pressed Ctrl-C (or Ctrl-D on an empty line).
    #[error("interrupted")]
    Interrupted,
    /// stdin or stderr is not a terminal.
    #[error("stdin and stderr must be terminals to prompt")]
    NotATerminal,
    /// Reading keys or writing to the terminal failed.
    #[error("terminal I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// True when both stdin and stderr are terminals (prompts are possible).
pub fn is_interactive() -> bool {
    io::stdin().is_terminal() && io::stderr().is_terminal()
}

/// Set while raw mode is on, so the panic hook knows to restore the terminal first.
static RAW_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Puts the terminal in raw mode (and bracketed paste) and restores it when dropped,
/// including while unwinding from a panic.
struct RawGuard;

impl RawGuard {
    fn enable() -> io::Result<RawGuard> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        RAW_ACTIVE.store(true, Ordering::SeqCst);
        let guard = RawGuard;
        let mut err = io::stderr();
        // Bracketed paste lets a pasted secret arrive as one event instead of keystrokes;
        // a terminal that does not know the sequence ignores it.
        let _ = crossterm::execute!(err, event::EnableBracketedPaste);
        Ok(guard)
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    if RAW_ACTIVE.swap(false, Ordering::SeqCst) {
        let mut err = io::stderr();
        let _ = crossterm::execute!(err, event::DisableBracketedPaste, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

/// Wrap the panic hook once: a panic while a prompt is open restores the terminal before
/// the message is printed (the guard's `Drop` would only run after it).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// What one key did to the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep reading.
    Continue,
    /// Enter was accepted: the value (never empty).
    Submit(String),
    /// The field was skipped (Esc, or Enter on an empty line, when the field allows empty).
    Skip,
    /// Ctrl-C, or Ctrl-D on an empty line.
    Abort,
}

/// A one-line editor: the text, the cursor and the message to show under the line.
///
/// `validator("")` decides whether the field may be skipped: when it accepts the empty
/// string, Esc and Enter on an empty line skip it (unless there is a default, which Enter
/// takes). A non-empty value is accepted only when the validator accepts it.
pub struct Editor<'a> {
    buf: Vec<char>,
    pos: usize,
    default: Option<&'a str>,
    validator: &'a dyn Fn(&str) -> Result<(), String>,
    /// Message of the last refused Enter/Esc on an empty line (cleared by typing).
    refused: Option<String>,
}

impl<'a> Editor<'a> {
    /// An empty line.
    pub fn new(
        validator: &'a dyn Fn(&str) -> Result<(), String>,
        default: Option<&'a str>,
    ) -> Editor<'a> {
        Editor {
            buf: Vec::new(),
            pos: 0,
            default,
            validator,
            refused: None,
        }
    }

    /// The text typed so far.
    pub fn text(&self) -> String {
        self.buf.iter().collect()
    }

    /// Cursor position, in characters.
    pub fn cursor(&self) -> usize {
        self.pos
    }

    /// Number of characters typed.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing is typed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The message to show under the line, if any: the validator's complaint about the
    /// text as typed, or why the last Enter/Esc was refused. It never contains the text.
    pub fn message(&self) -> Option<String> {
        if self.buf.is_empty() {
            return self.refused.clone();
        }
        (self.validator)(&self.text()).err()
    }

    /// Insert text at the cursor (control characters are dropped).
    pub fn insert_str(&mut self, s: &str) {
        for c in s.chars().filter(|c| !c.is_control()) {
            self.buf.insert(self.pos, c);
            self.pos += 1;
        }
        self.refused = None;
    }

    fn edit(&mut self, f: impl FnOnce(&mut Vec<char>, &mut usize)) {
        f(&mut self.buf, &mut self.pos);
        self.refused = None;
    }

    fn empty_allowed(&self) -> Result<(), String> {
        (self.validator)("").map_err(|m| {
            if m.is_empty() {
                "a value is required".to_owned()
            } else {
                m
            }
        })
    }

    /// Apply one key.
    pub fn key(&mut self, k: KeyEvent) -> Step {
        if k.kind == KeyEventKind::Release {
            return Step::Continue;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('c') if ctrl => Step::Abort,
            KeyCode::Char('d') if ctrl => {
                if self.buf.is_empty() {
                    Step::Abort
                } else {
                    self.edit(|b, p| {
                        if *p < b.len() {
                            b.remove(*p);
                        }
                    });
                    Step::Continue
                }
            }
            KeyCode::Enter => self.enter(),
            KeyCode::Char('m' | 'j') if ctrl => self.enter(),
            KeyCode::Esc => {
                if !self.buf.is_empty() {
                    // Esc on a typed line clears it first; a second Esc skips.
                    self.edit(|b, p| {
                        b.clear();
                        *p = 0;
                    });
                    return Step::Continue;
                }
                match self.empty_allowed() {
                    Ok(()) => Step::Skip,
                    Err(m) => {
                        self.refused = Some(m);
                        Step::Continue
                    }
                }
            }
            KeyCode::Backspace => {
                self.edit(|b, p| {
                    if *p > 0 {
                        *p -= 1;
                        b.remove(*p);
                    }
                });
                Step::Continue
            }
            KeyCode::Char('h') if ctrl => self.key(KeyEvent::from(KeyCode::Backspace)),
            KeyCode::Delete => {
                self.edit(|b, p| {
                    if *p < b.len() {
                        b.remove(*p);
                    }
                });
                Step::Continue
            }
            KeyCode::Left => {
                self.pos = self.pos.saturating_sub(1);
                Step::Continue
            }
            KeyCode::Char('b') if ctrl => self.key(KeyEvent::from(KeyCode::Left)),
            KeyCode::Right => {
                self.pos = (self.pos + 1).min(self.buf.len());
                Step::Continue
            }
            KeyCode::Char('f') if ctrl => self.key(KeyEvent::from(KeyCode::Right)),
            KeyCode::Home => {
                self.pos = 0;
                Step::Continue
            }
            KeyCode::Char('a') if ctrl => self.key(KeyEvent::from(KeyCode::Home)),
            KeyCode::End => {
                self.pos = self.buf.len();
                Step::Continue
            }
            KeyCode::Char('e') if ctrl => self.key(KeyEvent::from(KeyCode::End)),
            KeyCode::Char('u') if ctrl => {
                self.edit(|b, p| {
                    b.drain(..*p);
                    *p = 0;
                });
                Step::Continue
            }
            KeyCode::Char('k') if ctrl => {
                self.edit(|b, p| b.truncate(*p));
                Step::Continue
            }
            KeyCode::Char('w') if ctrl => {
                self.edit(|b, p| {
                    let mut start = *p;
                    while start > 0 && b[start - 1].is_whitespace() {
                        start -= 1;
                    }
                    while start > 0 && !b[start - 1].is_whitespace() {
                        start -= 1;
                    }
                    b.drain(start..*p);
                    *p = start;
                });
                Step::Continue
            }
            KeyCode::Char(c)
                if !k
                    .modifiers
                    .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
            {
                let mut s = [0u8; 4];
                self.insert_str(c.encode_utf8(&mut s));
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    fn enter(&mut self) -> Step {
        if self.buf.is_empty() {
            if let Some(d) = self.default {
                return match (self.validator)(d) {
                    Ok(()) => Step::Submit(d.to_owned()),
                    Err(m) => {
                        self.refused = Some(format!("the default is not accepted: {m}"));
                        Step::Continue
                    }
                };
            }
            return match self.empty_allowed() {
                Ok(()) => Step::Skip,
                Err(m) => {
                    self.refused = Some(m);
                    Step::Continue
                }
            };
        }
        let text = self.text();
        match (self.validator)(&text) {
            Ok(()) => Step::Submit(text),
            // The message is already on screen (it is computed from the text).
            Err(_) => Step::Continue,
        }
    }
}

/// Serializes prompts: two threads never draw on the terminal at once.
static TERMINAL: Mutex<()> = Mutex::new(());

/// Read one line from the terminal, validating it as it is typed.
///
/// Shows `help` (any number of lines) dimmed above the line, then `label` (with
/// `[default]` when there is one) and the input. With `secret`, each typed character shows
/// as one `*`; the text itself is never written to the terminal. While the text does not
/// pass `validator`, its message is shown on the line below and Enter is refused.
///
/// A label ending in whitespace is used as is (no `: `, no `[default]`, nothing shown for a
/// skipped answer), for bare continuation prompts.
///
/// Returns `Ok(Some(value))` (never empty), or `Ok(None)` when the field was skipped: Esc
/// or Enter on an empty line, allowed only when `validator("")` is `Ok` (otherwise its
/// message is shown). Enter on an empty line takes `default` when there is one.
/// Ctrl-C (or Ctrl-D on an empty line) returns [`PromptError::Interrupted`], with the
/// terminal restored.
pub fn read_line(
    label: &str,
    help: Option<&str>,
    secret: bool,
    validator: impl Fn(&str) -> Result<(), String>,
    default: Option<&str>,
) -> Result<Option<String>, PromptError> {
    Field {
        label,
        help,
        secret,
        default,
        skip_note: "(skipped)",
    }
    .read(validator)
}

/// The options of [`read_line`], for callers that need one more: what a skipped answer
/// shows (`(done)` for the empty answer that ends a list, say).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// Shown before the input (see [`read_line`]).
    pub label: &'a str,
    /// Lines shown dimmed above the input.
    pub help: Option<&'a str>,
    /// Mask the input with `*`.
    pub secret: bool,
    /// Taken by Enter on an empty line.
    pub default: Option<&'a str>,
    /// Shown after the label when the field is skipped.
    pub skip_note: &'a str,
}

impl Field<'_> {
    /// Read the field: exactly [`read_line`] with these options.
    pub fn read(
        &self,
        validator: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Option<String>, PromptError> {
        let Field {
            label,
            help,
            secret,
            default,
            skip_note,
        } = *self;
        read_field(label, help, secret, &validator, default, skip_note)
    }
}

fn read_field(
    label: &str,
    help: Option<&str>,
    secret: bool,
    validator: &dyn Fn(&str) -> Result<(), String>,
    default: Option<&str>,
    skip_note: &str,
) -> Result<Option<String>, PromptError> {
    if !is_interactive() {
        return Err(PromptError::NotATerminal);
    }
    let _lock = TERMINAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut err = io::stderr();
    if let Some(help) = help {
        for line in help.lines() {
            writeln!(err, "{}", format!("  {line}").dim())?;
        }
    }
    let cols = term_cols();
    // A label ending in whitespace is a bare prompt (e.g. `  | ` for script lines).
    let bare = label.ends_with(char::is_whitespace);
    let mut prefix = match (default, bare) {
        (_, true) => label.to_owned(),
        (Some(d), false) => format!("{label} [{d}]: "),
        (None, false) => format!("{label}: "),
    };
    if prefix.chars().count() + MIN_INPUT > cols {
        // A label too wide for one line goes on its own line (the terminal wraps it).
        writeln!(err, "{}", prefix.trim_end())?;
        prefix = "> ".to_owned();
    }
    err.flush()?;
    let guard = RawGuard::enable()?;
    let mut ed = Editor::new(validator, default);
    let mut screen = Screen {
        prefix: &prefix,
        secret,
        default,
    };
    screen.draw(&ed)?;
    let outcome = loop {
        let step = match event::read()? {
            Event::Key(k) => ed.key(k),
            Event::Paste(s) => {
                ed.insert_str(&s);
                Step::Continue
            }
            _ => Step::Continue,
        };
        match step {
            Step::Continue => screen.draw(&ed)?,
            other => break other,
        }
    };
    let result = match outcome {
        Step::Submit(v) => {
            screen.finish(&ed, None)?;
            Ok(Some(v))
        }
        Step::Skip => {
            screen.finish(&ed, Some(if bare { "" } else { skip_note }))?;
            Ok(None)
        }
        _ => {
            screen.finish(&ed, Some("^C"))?;
            Err(PromptError::Interrupted)
        }
    };
    drop(guard);
    result
}

/// Narrowest input area before the label moves to its own line.
const MIN_INPUT: usize = 12;

fn term_cols() -> usize {
    terminal::size()
        .map(|(c, _)| usize::from(c))
        .ok()
        .filter(|&c| c >= 20)
        .unwrap_or(80)
}

/// Draws the input line and the message line under it, in raw mode.
struct Screen<'a> {
    prefix: &'a str,
    secret: bool,
    default: Option<&'a str>,
}

impl Screen<'_> {
    /// What the line shows (stars for a secret) and where the cursor is, scrolled
    /// horizontally so that the cursor stays visible in `avail` columns.
    fn visible(&self, ed: &Editor<'_>, avail: usize) -> (String, usize) {
        let chars: Vec<char> = if self.secret {
            vec!['*'; ed.len()]
        } else {
            ed.text().chars().collect()
        };
        let pos = ed.cursor();
        let start = if pos < avail { 0 } else { pos + 1 - avail };
        let end = (start + avail).min(chars.len());
        (chars[start..end].iter().collect(), pos - start)
    }

    fn draw(&mut self, ed: &Editor<'_>) -> io::Result<()> {
        let cols = term_cols();
        let prefix_w = self.prefix.chars().count();
        let avail = cols.saturating_sub(prefix_w + 1).max(4);
        let (shown, cur) = self.visible(ed, avail);
        let mut out: Vec<u8> = Vec::new();
        queue!(
            out,
            cursor::MoveToColumn(0),
            terminal::Clear(terminal::ClearType::CurrentLine),
        )?;
        write!(out, "{}{shown}", self.prefix.bold())?;
        // The message line below: created on the first draw, rewritten on each one.
        write!(out, "\r\n")?;
        queue!(out, terminal::Clear(terminal::ClearType::CurrentLine))?;
        if let Some(m) = ed.message() {
            let m: String = format!("  ! {m}").chars().take(cols - 1).collect();
            write!(out, "{}", m.red())?;
        }
        queue!(
            out,
            cursor::MoveUp(1),
            cursor::MoveToColumn(u16::try_from(prefix_w + cur).unwrap_or(u16::MAX)),
        )?;
        let mut err = io::stderr();
        err.write_all(&out)?;
        err.flush()
    }

    /// Final state of the line: the value (stars for a secret) or a note; the message
    /// line is cleared and the cursor left at the start of the next line.
    fn finish(&mut self, ed: &Editor<'_>, note: Option<&str>) -> io::Result<()> {
        let cols = term_cols();
        let prefix_w = self.prefix.chars().count();
        let mut out: Vec<u8> = Vec::new();
        queue!(
            out,
            cursor::MoveToColumn(0),
            terminal::Clear(terminal::ClearType::CurrentLine),
        )?;
        write!(out, "{}", self.prefix.bold())?;
        match note {
            Some(n) => write!(out, "{}", n.dim())?,
            // The default was taken: show it (defaults are never secret).
            None if ed.is_empty() => write!(out, "{}", self.default.unwrap_or("").dim())?,
            None => {
                let avail = cols.saturating_sub(prefix_w + 1).max(4);
                let shown: String = if self.secret {
                    "*".repeat(ed.len().min(avail))
                } else {
                    ed.text().chars().take(avail).collect()
                };
                write!(out, "{shown}")?;
            }
        }
        write!(out, "\r\n")?;
        queue!(out, terminal::Clear(terminal::ClearType::CurrentLine))?;
        let mut err = io::stderr();
        err.write_all(&out)?;
        err.flush()
    }
}

/// Ask a yes/no question; `default` is taken on an empty Enter.
pub fn confirm(label: &str, help: Option<&str>, default: bool) -> Result<bool, PromptError> {
    let label = format!("{label} (y/n)");
    let d = if default { "y" } else { "n" };
    loop {
        // Empty is refused, so Enter takes the default and Esc is refused.
        if let Some(v) = read_line(&label, help, false, yes_no_check, Some(d))? {
            return Ok(parse_yes_no(&v).unwrap_or(default));
        }
    }
}

/// `y`, `yes`, `n`, `no` (any case) → bool.
pub fn parse_yes_no(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Some(true),
        "n" | "no" => Some(false),
        _ => None,
    }
}

fn yes_no_check(s: &str) -> Result<(), String> {
    if parse_yes_no(s).is_some() {
        Ok(())
    } else {
        Err("answer y or n".to_owned())
    }
}

/// The help lines shown above a param prompt: description, whether it is required or
/// how to skip it, masking, and the choices of an enum.
pub fn param_help(param: &Param, required: bool) -> String {
    let mut lines = Vec::new();
    if let Some(d) = param
        .description
        .as_deref()
        .filter(|d| !d.trim().is_empty())
    {
        lines.push(d.trim().to_owned());
    }
    let mut what = vec![if required {
        "required".to_owned()
    } else {
        "optional: Esc or an empty Enter skips it".to_owned()
    }];
    if param.secret {
        what.push("secret: typed characters show as *".to_owned());
    }
    match &param.validator {
        Some(Validator::Enum { values }) => what.push(format!("one of: {}", values.join(", "))),
        Some(Validator::Regex { pattern }) => what.push(format!("must match {pattern}")),
        _ => {}
    }
    lines.push(what.join("; "));
    lines.join("\n")
}

/// The check applied as a param value is typed: empty is refused for a required param and
/// means "skip" for an optional one; anything else must pass the param's validator.
pub fn param_check(param: &Param, required: bool, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return if required {
            Err(format!("{} is required", param.key))
        } else {
            Ok(())
        };
    }
    match &param.validator {
        Some(v) => v.check(value),
        None => Ok(()),
    }
}

/// Prompts for unresolved params on the terminal (see [`Prompter`]).
///
/// After Ctrl-C it asks nothing more (every later prompt returns `None` at once) and
/// [`TtyPrompter::interrupted`] says where it happened, so that the caller can stop
/// before changing anything.
#[derive(Debug, Default)]
pub struct TtyPrompter {
    state: Mutex<PrompterState>,
}

#[derive(Debug, Default)]
struct PrompterState {
    /// The instance whose heading was printed last.
    announced: Option<String>,
    /// `param KEY of INSTANCE` where Ctrl-C was pressed.
    interrupted: Option<String>,
}

impl TtyPrompter {
    /// A prompter with nothing asked yet.
    pub fn new() -> TtyPrompter {
        TtyPrompter::default()
    }

    /// Where the person pressed Ctrl-C, e.g. `param API_KEY of demo-a`; `None` if never.
    pub fn interrupted(&self) -> Option<String> {
        self.lock().interrupted.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrompterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Prompter for TtyPrompter {
    fn prompt(&self, instance: &str, param: &Param, required: bool) -> Option<String> {
        {
            let mut st = self.lock();
            if st.interrupted.is_some() {
                return None;
            }
            if st.announced.as_deref() != Some(instance) {
                eprintln!(
                    "\n{} needs values for its params (Ctrl-C aborts, nothing is changed)",
                    instance.bold()
                );
                st.announced = Some(instance.to_owned());
            }
        }
        let label = format!("{} ({})", param.label, param.key);
        let help = param_help(param, required);
        let default = param.default.as_deref().filter(|_| !param.secret);
        let check = |v: &str| param_check(param, required, v);
        match read_line(&label, Some(&help), param.secret, check, default) {
            Ok(v) => v,
            Err(PromptError::Interrupted) => {
                self.lock().interrupted = Some(format!("param {} of {instance}", param.key));
                None
            }
            Err(e) => {
                eprintln!("warning: cannot prompt for {}: {e}", param.key);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(code: KeyCode) -> KeyEvent {
        KeyEvent::from(code)
    }
    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }
    fn typed(ed: &mut Editor<'_>, s: &str) {
        for c in s.chars() {
            assert_eq!(ed.key(k(KeyCode::Char(c))), Step::Continue);
        }
    }

    fn required(s: &str) -> Result<(), String> {
        if s.is_empty() {
            Err("a value is required".into())
        } else if s.chars().all(|c| c.is_ascii_digit()) {
            Ok(())
        } else {
            Err("must be digits".into())
        }
    }

    #[test]
    fn enter_is_refused_while_invalid_then_accepted() {
        let mut ed = Editor::new(&required, None);
        assert_eq!(ed.key(k(KeyCode::Enter)), Step::Continue);
        assert_eq!(ed.message().as_deref(), Some("a value is required"));
        typed(&mut ed, "12x");
        assert_eq!(ed.message().as_deref(), Some("must be digits"));
        assert_eq!(ed.key(k(KeyCode::Enter)), Step::Continue);
        assert_eq!(ed.key(k(KeyCode::Backspace)), Step::Continue);
        assert_eq!(ed.message(), None);
        assert_eq!(ed.key(k(KeyCode::Enter)), Step::Submit("12".into()));
    }

    #[test]
    fn esc_skips_only_when_empty_is_allowed() {
        let mut ed = Editor::new(&required, None);
        assert_eq!(ed.key(k(KeyCode::Esc)), Step::Continue);
        assert!(ed.message().is_some());
        let optional = |s: &str| if s.is_empty() { Ok(()) } else { required(s) };
        let mut ed = Editor::new(&optional, None);
        typed(&mut ed, "1");
        // The first Esc clears the line, the second skips.
        assert_eq!(ed.key(k(KeyCode::Esc)), Step::Continue);
        assert!(ed.is_empty());
        assert_eq!(ed.key(k(KeyCode::Esc)), Step::Skip);
        let mut ed = Editor::new(&optional, None);
        assert_eq!(ed.key(k(KeyCode::Enter)), Step::Skip);
    }

    #[test]
    fn enter_on_empty_takes_the_default() {
        let mut ed = Editor::new(&required, Some("42"));
        assert_eq!(ed.key(k(KeyCode::Enter)), Step::Submit("42".into()));
        let mut ed = Editor::new(&required, Some("x"));
        assert_eq!(ed.key(k(KeyCode::Enter)), Step::Continue);
        assert!(ed.message().unwrap().contains("default"));
    }

    #[test]
    fn ctrl_c_aborts_and_ctrl_d_only_on_empty() {
        let mut ed = Editor::new(&required, None);
        typed(&mut ed, "12");
        assert_eq!(ed.key(ctrl('d')), Step::Continue);
        assert_eq!(ed.key(ctrl('c')), Step::Abort);
        let mut ed = Editor::new(&required, None);
        assert_eq!(ed.key(ctrl('d')), Step::Abort);
    }

    #[test]
    fn editing_keys() {
        let any = |_: &str| Ok(());
        let mut ed = Editor::new(&any, None);
        typed(&mut ed, "hello world");
        ed.key(ctrl('w'));
        assert_eq!(ed.text(), "hello ");
        ed.key(k(KeyCode::Home));
        ed.key(k(KeyCode::Delete));
        assert_eq!(ed.text(), "ello ");
        ed.key(k(KeyCode::End));
        ed.key(k(KeyCode::Left));
        typed(&mut ed, "!");
        assert_eq!(ed.text(), "ello! ");
        ed.key(ctrl('u'));
        assert_eq!(ed.text(), " ");
        ed.insert_str("a\nb\tc");
        assert_eq!(ed.text(), "abc ");
    }

    #[test]
    fn secret_is_drawn_as_one_star_per_character() {
        let any = |_: &str| Ok(());
        let mut ed = Editor::new(&any, None);
        typed(&mut ed, "sk-élan");
        let s = Screen {
            prefix: "Key: ",
            secret: true,
            default: None,
        };
        let (shown, cur) = s.visible(&ed, 40);
        assert_eq!(shown, "*******");
        assert_eq!(cur, 7);
        // Scrolled: the cursor stays in view.
        let s = Screen {
            prefix: "Key: ",
            secret: false,
            default: None,
        };
        let (shown, cur) = s.visible(&ed, 4);
        assert_eq!(shown, "lan");
        assert_eq!(cur, 3);
    }

    #[test]
    fn param_check_and_help() {
        let p = Param {
            key: "MODE".into(),
            label: "Mode".into(),
            description: Some("How it runs".into()),
            secret: false,
            default: None,
            validator: Some(Validator::Enum {
                values: vec!["fast".into(), "slow".into()],
            }),
        };
        assert!(param_check(&p, true, "").is_err());
        assert!(param_check(&p, false, "").is_ok());
        assert!(param_check(&p, false, "x").is_err());
        assert!(param_check(&p, true, "fast").is_ok());
        let h = param_help(&p, true);
        assert!(
            h.contains("How it runs") && h.contains("one of: fast, slow"),
            "{h}"
        );
    }
}
