//! The Dockerfile syntax as BuildKit's frontend reads it: parser
//! directives (`# syntax=`, `# escape=`), comments, line continuations,
//! heredocs (`RUN <<EOF`, `COPY <<EOF /path`, `<<-` and quoted
//! delimiters), `--flag=value` options, JSON and shell forms, and the
//! variable substitution of the instructions that substitute (`$VAR`,
//! `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`,
//! `${VAR+alt}`, `${VAR:?message}`), quotes removed as its shell lexer
//! removes them.
//!
//! Written by hand: the Rust crates that parse Dockerfiles
//! (`dockerfile-parser` among them) know neither heredocs nor the escape
//! directive, and BuildKit's substitution rules are short enough to follow
//! exactly here.

use anyhow::{bail, Result};

/// One instruction, its continuation lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The line it starts on (1-based).
    pub line: usize,
    /// Upper case (`RUN`, `COPY`, …).
    pub keyword: String,
    /// `--name=value` options before the arguments, in order (a bare
    /// `--name` has no value).
    pub flags: Vec<(String, Option<String>)>,
    pub args: Args,
    /// The heredocs its line opens, in order.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's text as written, continuations joined (its
    /// arguments without the flags are in `args`).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `["a", "b"]`.
    Json(Vec<String>),
    /// Anything else, as written (leading and trailing blanks removed).
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    /// The body, each line ending in a newline (with `<<-`, leading tabs
    /// removed).
    pub body: String,
    /// An unquoted delimiter: the body is subject to substitution.
    pub expand: bool,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// Parses `text`; errors name the line (`name` is how the file is named).
pub fn parse(name: &str, text: &str) -> Result<Dockerfile> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: only at the very top, before any comment, blank
    // line or instruction.
    let mut seen = Vec::new();
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        if seen.contains(&key) {
            bail!(
                "{name}:{}: the parser directive {key} is given twice",
                i + 1
            );
        }
        if key == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => bail!(
                    "{name}:{}: escape={other:?} is not a valid escape character: use \\ or `",
                    i + 1
                ),
            };
        }
        seen.push(key);
        i += 1;
    }
    let mut instructions = Vec::new();
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let mut joined = String::new();
        loop {
            let current = lines[i];
            i += 1;
            let body = current.trim_end();
            match body.strip_suffix(escape) {
                Some(rest) if i < lines.len() => {
                    joined.push_str(rest);
                    // Comment and empty lines inside a continuation are dropped.
                    while i < lines.len() {
                        let next = lines[i].trim_start();
                        if next.is_empty() || next.starts_with('#') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    if i == lines.len() {
                        break;
                    }
                }
                Some(rest) => {
                    joined.push_str(rest);
                    break;
                }
                None => {
                    joined.push_str(current);
                    break;
                }
            }
        }
        let joined = joined.trim().to_string();
        let (keyword, rest) = match joined.split_once(|c: char| c.is_whitespace()) {
            Some((k, r)) => (k.to_ascii_uppercase(), r.trim_start().to_string()),
            None => (joined.to_ascii_uppercase(), String::new()),
        };
        if !keyword.bytes().all(|b| b.is_ascii_alphabetic()) {
            bail!(
                "{name}:{}: {:?} is not a Dockerfile instruction",
                start + 1,
                first_word(&joined)
            );
        }
        let (flags, rest) = if matches!(keyword.as_str(), "FROM" | "RUN" | "COPY" | "ADD") {
            split_flags(&rest)
        } else {
            (Vec::new(), rest)
        };
        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for (delimiter, strip_tabs, expand) in heredoc_markers(&rest) {
                let mut body = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    let l = if strip_tabs {
                        raw.trim_start_matches('\t')
                    } else {
                        raw
                    };
                    if l == delimiter {
                        closed = true;
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                if !closed {
                    bail!(
                        "{name}:{}: the heredoc <<{delimiter} is never closed (no line {delimiter:?})",
                        start + 1
                    );
                }
                heredocs.push(Heredoc {
                    name: delimiter,
                    body,
                    expand,
                });
            }
        }
        let args = match json_array(&rest) {
            Some(words) => Args::Json(words),
            None => Args::Shell(rest.trim().to_string()),
        };
        instructions.push(Instruction {
            line: start + 1,
            keyword,
            flags,
            args,
            heredocs,
            text: joined,
        });
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or(text)
}

/// `# key=value` with a known key (lower case), else `None`.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim().to_ascii_lowercase();
    if !matches!(key.as_str(), "syntax" | "escape" | "check") {
        return None;
    }
    if key.contains(char::is_whitespace) {
        return None;
    }
    Some((key, value.trim().to_string()))
}

/// Leading `--name[=value]` words.
fn split_flags(text: &str) -> (Vec<(String, Option<String>)>, String) {
    let mut flags = Vec::new();
    let mut rest = text.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let word = &after[..end];
        if word.is_empty() {
            break;
        }
        match word.split_once('=') {
            Some((k, v)) => flags.push((k.to_string(), Some(unquote_flag(v)))),
            None => flags.push((word.to_string(), None)),
        }
        rest = after[end..].trim_start();
    }
    (flags, rest.to_string())
}

fn unquote_flag(value: &str) -> String {
    let v = value.as_bytes();
    if v.len() >= 2 && (v[0] == b'"' || v[0] == b'\'') && v[v.len() - 1] == v[0] {
        value[1..value.len() - 1].to_string()
    } else {
        value.to_string()
    }
}

/// The heredocs a line opens: `<<WORD`, `<<-WORD`, `<<"WORD"`, `<<'WORD'`
/// (delimiter, strip tabs, expand). `<<<` (a here-string) is none.
fn heredoc_markers(text: &str) -> Vec<(String, bool, bool)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 2 < bytes.len() + 1 {
        if i + 1 < bytes.len() && bytes[i] == b'<' && bytes[i + 1] == b'<' {
            if bytes.get(i + 2) == Some(&b'<') {
                i += 3;
                continue;
            }
            let mut j = i + 2;
            let strip = bytes.get(j) == Some(&b'-');
            if strip {
                j += 1;
            }
            let quote = match bytes.get(j) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    j += 1;
                    Some(q)
                }
                _ => None,
            };
            let start = j;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            let word = &text[start..j];
            let closed = match quote {
                Some(q) => bytes.get(j) == Some(&q),
                None => true,
            };
            if !word.is_empty() && closed {
                found.push((word.to_string(), strip, quote.is_none()));
                i = j + usize::from(quote.is_some());
                continue;
            }
        }
        i += 1;
    }
    found
}

/// A JSON array of strings, or `None` (then the shell form applies).
fn json_array(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// How a word is looked up: the stage's ENV and ARGs in scope.
pub trait Vars {
    fn lookup(&self, name: &str) -> Option<String>;
}

impl Vars for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Vars for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.as_slice().lookup(name)
    }
}

/// `text` as one word: substituted, quotes and escapes removed, blanks kept.
pub fn expand_word(text: &str, vars: &dyn Vars, escape: char) -> Result<String> {
    Ok(Lexer::new(text, vars, escape).words(false)?.join(""))
}

/// `text` with only its variables substituted (`$NAME`, `${…}`; an escaped
/// `$` stays a `$`): a heredoc's body, whose quotes are its own.
pub fn expand_variables(text: &str, vars: &dyn Vars, escape: char) -> Result<String> {
    let mut lexer = Lexer::new(text, vars, escape);
    let mut out = String::new();
    while let Some(c) = lexer.next() {
        match c {
            '$' => out.push_str(&lexer.variable()?),
            c if c == escape && lexer.peek() == Some('$') => {
                lexer.next();
                out.push('$');
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `text` split into words at unquoted blanks, each substituted and
/// unquoted (COPY's sources and destination, EXPOSE's ports).
pub fn expand_words(text: &str, vars: &dyn Vars, escape: char) -> Result<Vec<String>> {
    Lexer::new(text, vars, escape).words(true)
}

/// `key=value` pairs (ENV, LABEL, ARG), each side substituted and unquoted;
/// `legacy` (ENV, LABEL) takes `KEY VALUE` too, and ARG takes a bare `NAME`.
pub fn expand_pairs(
    text: &str,
    vars: &dyn Vars,
    escape: char,
    keyword: &str,
) -> Result<Vec<(String, Option<String>)>> {
    let raw = Lexer::new(text, vars, escape).raw_words();
    if raw.is_empty() {
        bail!("{keyword} needs at least one argument");
    }
    let has_equals = raw[0].contains('=');
    if !has_equals && keyword != "ARG" {
        // `ENV KEY VALUE...`: the rest of the line is the value.
        let name = expand_word(&raw[0], vars, escape)?;
        let value_text = text.trim_start()[raw[0].len()..].trim();
        if value_text.is_empty() {
            bail!("{keyword} {name} has no value: use {keyword} {name}=VALUE");
        }
        return Ok(vec![(name, Some(expand_word(value_text, vars, escape)?))]);
    }
    let mut pairs = Vec::new();
    // Later pairs of one ENV see the earlier ones.
    let mut scope: Vec<(String, String)> = Vec::new();
    for word in raw {
        let lookup = Layered {
            first: &scope,
            then: vars,
        };
        match word.split_once('=') {
            Some((k, v)) => {
                let key = expand_word(k, &lookup, escape)?;
                if key.is_empty() {
                    bail!("{keyword}: {word:?} has no name before '='");
                }
                let value = expand_word(v, &lookup, escape)?;
                if keyword == "ENV" {
                    scope.push((key.clone(), value.clone()));
                }
                pairs.push((key, Some(value)));
            }
            None if keyword == "ARG" => pairs.push((expand_word(&word, &lookup, escape)?, None)),
            None => bail!("{keyword}: {word:?} is not KEY=VALUE"),
        }
    }
    Ok(pairs)
}

struct Layered<'a> {
    first: &'a [(String, String)],
    then: &'a dyn Vars,
}

impl Vars for Layered<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.first.lookup(name).or_else(|| self.then.lookup(name))
    }
}

/// BuildKit's shell lexer (`shell.Lex`), for words.
struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    escape: char,
}

impl<'a> Lexer<'a> {
    fn new(text: &str, vars: &'a dyn Vars, escape: char) -> Lexer<'a> {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            vars,
            escape,
        }
    }

    /// The words as written (quotes kept), split at unquoted blanks.
    fn raw_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut i = 0;
        while i < self.chars.len() {
            let c = self.chars[i];
            match quote {
                Some(q) => {
                    word.push(c);
                    if c == self.escape && q == '"' && i + 1 < self.chars.len() {
                        word.push(self.chars[i + 1]);
                        i += 1;
                    } else if c == q {
                        quote = None;
                    }
                }
                None if c.is_whitespace() => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                None => {
                    word.push(c);
                    if c == self.escape && i + 1 < self.chars.len() {
                        word.push(self.chars[i + 1]);
                        i += 1;
                    } else if c == '"' || c == '\'' {
                        quote = Some(c);
                    }
                }
            }
            i += 1;
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += usize::from(c.is_some());
        c
    }

    fn words(&mut self, split: bool) -> Result<Vec<String>> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut started = false;
        while let Some(c) = self.next() {
            match c {
                c if split && c.is_whitespace() => {
                    if started {
                        words.push(std::mem::take(&mut word));
                        started = false;
                    }
                }
                '\'' => {
                    started = true;
                    loop {
                        match self.next() {
                            Some('\'') => break,
                            Some(c) => word.push(c),
                            None => bail!("unexpected end of text: a ' is not closed"),
                        }
                    }
                }
                '"' => {
                    started = true;
                    loop {
                        match self.next() {
                            Some('"') => break,
                            Some('$') => word.push_str(&self.variable()?),
                            Some(c) if c == self.escape => match self.next() {
                                Some(n @ ('"' | '$')) => word.push(n),
                                Some(n) if n == self.escape => word.push(n),
                                Some(n) => {
                                    word.push(c);
                                    word.push(n);
                                }
                                None => bail!("unexpected end of text: a \" is not closed"),
                            },
                            Some(c) => word.push(c),
                            None => bail!("unexpected end of text: a \" is not closed"),
                        }
                    }
                }
                '$' => {
                    started = true;
                    word.push_str(&self.variable()?)
                }
                c if c == self.escape => {
                    started = true;
                    match self.next() {
                        Some(n) => word.push(n),
                        None => word.push(c),
                    }
                }
                c => {
                    started = true;
                    word.push(c)
                }
            }
        }
        if started || (!split && words.is_empty()) {
            words.push(word);
        }
        Ok(words)
    }

    /// After a `$`: `NAME`, `{NAME}`, `{NAME:-word}` and the others.
    fn variable(&mut self) -> Result<String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let name = self.name();
                if name.is_empty() {
                    bail!("bad substitution: ${{ without a variable name");
                }
                let value = self.vars.lookup(&name);
                match self.next() {
                    Some('}') => Ok(value.unwrap_or_default()),
                    Some(':') => {
                        let op = self.next();
                        let word = self.until_brace()?;
                        let set = value.as_deref().is_some_and(|v| !v.is_empty());
                        self.apply(op, &name, value, set, word)
                    }
                    Some(op @ ('-' | '+' | '?')) => {
                        let word = self.until_brace()?;
                        let set = value.is_some();
                        self.apply(Some(op), &name, value, set, word)
                    }
                    other => bail!(
                        "bad substitution: ${{{name}{}…}} is not supported (use $NAME, ${{NAME}}, ${{NAME:-word}}, ${{NAME:+word}} or ${{NAME:?message}})",
                        other.map(String::from).unwrap_or_default()
                    ),
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok(self.vars.lookup(&name).unwrap_or_default())
            }
            Some(c) if c.is_ascii_digit() => {
                // Positional parameters are empty, as BuildKit has them.
                self.pos += 1;
                Ok(String::new())
            }
            _ => Ok("$".into()),
        }
    }

    fn apply(
        &self,
        op: Option<char>,
        name: &str,
        value: Option<String>,
        set: bool,
        word: String,
    ) -> Result<String> {
        match op {
            Some('-') => Ok(if set { value.unwrap_or_default() } else { word }),
            Some('+') => Ok(if set { word } else { String::new() }),
            Some('?') if set => Ok(value.unwrap_or_default()),
            Some('?') => bail!(
                "{name}: {}",
                if word.is_empty() {
                    "is not set".to_string()
                } else {
                    word
                }
            ),
            _ => bail!("bad substitution in ${{{name}:…}}: use :-, :+ or :?"),
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    /// The word of `${NAME:-word}`, itself substituted, up to its `}`.
    fn until_brace(&mut self) -> Result<String> {
        let mut word = String::new();
        loop {
            match self.next() {
                Some('}') => return Ok(word),
                Some('$') => word.push_str(&self.variable()?),
                Some('\'') => loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("bad substitution: a ' is not closed"),
                    }
                },
                Some('"') => {}
                Some(c) if c == self.escape => {
                    if let Some(n) = self.next() {
                        word.push(n);
                    }
                }
                Some(c) => word.push(c),
                None => bail!("bad substitution: a ${{ is not closed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        vec![
            ("A".into(), "apple".into()),
            ("EMPTY".into(), String::new()),
        ]
    }

    #[test]
    fn continuations_comments_directives_and_forms() {
        let text = "# syntax=docker/dockerfile:1\n# escape=`\n\nFROM busybox AS base\n\
                    RUN echo one `\n  # a comment inside\n\n  two\n\
                    CMD [\"/bin/sh\", \"-c\", \"echo hi\"]\n# trailing\nENTRYPOINT echo x\n";
        let df = parse("Dockerfile", text).unwrap();
        assert_eq!(df.escape, '`');
        let kw: Vec<&str> = df.instructions.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(kw, ["FROM", "RUN", "CMD", "ENTRYPOINT"]);
        assert_eq!(df.instructions[0].line, 4);
        assert_eq!(
            df.instructions[1].args,
            Args::Shell("echo one   two".into())
        );
        assert_eq!(df.instructions[2].line, 9);
        assert_eq!(
            df.instructions[2].args,
            Args::Json(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(df.instructions[3].args, Args::Shell("echo x".into()));
        // A directive after an instruction is a comment.
        let df = parse("Dockerfile", "FROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(df.instructions[1].args, Args::Shell("a  b".into()));
    }

    #[test]
    fn heredocs_and_flags() {
        let text = "FROM x\nRUN <<EOF\necho a\necho $HOME\nEOF\n\
                    COPY --chown=1:2 --chmod=0600 <<'END' <<-TABS /dst/\nliteral $A\nEND\n\tx\n\tTABS\n\
                    RUN cat <<<word\n";
        let df = parse("Dockerfile", text).unwrap();
        let run = &df.instructions[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].body, "echo a\necho $HOME\n");
        assert!(run.heredocs[0].expand);
        let copy = &df.instructions[2];
        assert_eq!(copy.line, 6);
        assert_eq!(
            copy.flags,
            vec![
                ("chown".into(), Some("1:2".into())),
                ("chmod".into(), Some("0600".into()))
            ]
        );
        assert_eq!(copy.heredocs[0].name, "END");
        assert!(!copy.heredocs[0].expand);
        assert_eq!(copy.heredocs[1].body, "x\n");
        assert_eq!(df.instructions[3].line, 11);
        assert!(df.instructions[3].heredocs.is_empty());
        let err = parse("Dockerfile", "FROM x\nRUN <<EOF\nno end\n").unwrap_err();
        assert!(
            err.to_string().contains("Dockerfile:2: the heredoc <<EOF"),
            "{err}"
        );
    }

    #[test]
    fn substitution_as_buildkit_does_it() {
        let v = vars();
        let e = |t: &str| expand_word(t, &v, '\\').unwrap();
        assert_eq!(e("$A"), "apple");
        assert_eq!(e("${A}s"), "apples");
        assert_eq!(e("${MISSING:-pear}"), "pear");
        assert_eq!(e("${EMPTY:-pear}"), "pear");
        assert_eq!(e("${EMPTY-pear}"), "");
        assert_eq!(e("${A:+yes}"), "yes");
        assert_eq!(e("${MISSING:+yes}"), "");
        assert_eq!(e("${MISSING:-$A}"), "apple");
        assert_eq!(e("'$A'"), "$A");
        assert_eq!(e("\"$A b\""), "apple b");
        assert_eq!(e("\\$A"), "$A");
        assert_eq!(e("a$"), "a$");
        assert!(expand_word("${MISSING:?must be set}", &v, '\\')
            .unwrap_err()
            .to_string()
            .contains("MISSING: must be set"));
        assert_eq!(
            expand_words("*constraints.txt  \"a b\" $A", &v, '\\').unwrap(),
            ["*constraints.txt", "a b", "apple"]
        );
        let pairs = expand_pairs("X=1 Y=\"$X two\" Z=${A}", &v, '\\', "ENV").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("X".into(), Some("1".into())),
                ("Y".into(), Some("1 two".into())),
                ("Z".into(), Some("apple".into()))
            ]
        );
        let legacy = expand_pairs("NAME some value $A", &v, '\\', "ENV").unwrap();
        assert_eq!(
            legacy,
            vec![("NAME".into(), Some("some value apple".into()))]
        );
        let args = expand_pairs("V=1 BARE", &v, '\\', "ARG").unwrap();
        assert_eq!(args[1], ("BARE".into(), None));
    }
}
