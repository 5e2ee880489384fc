//! A model of what GRUB 2.06 does with the configurations ironpxe writes, for tests:
//! its script lexer (words, quotes, escapes, variables, comments, `;`), the few
//! commands the configurations use, and how `linux` turns its arguments into the
//! kernel command line. Written from GRUB's `grub-core/script/yylex.l`,
//! `grub-core/lib/cmdline.c` and `grub-core/lib/arg.c`, and checked against GRUB in
//! the lab (the QEMU tests boot the real thing).

use std::collections::HashMap;

/// What running a configuration did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// Lines printed by `echo`.
    pub echoes: Vec<String>,
    /// Files passed to `source`.
    pub sourced: Vec<String>,
    /// The kernel file and the command line the kernel receives.
    pub linux: Option<(String, String)>,
    /// The initrd files, in order.
    pub initrds: Vec<String>,
    /// `boot` ran (the script ends there).
    pub booted: bool,
    /// `exit` ran.
    pub exited: bool,
}

/// Splits a script into commands, each a list of expanded words. Errors on what the
/// renderer must never write: unbalanced quotes, unquoted `{ } | & < >`.
pub fn commands(script: &str, vars: &HashMap<String, String>) -> Result<Vec<Vec<String>>, String> {
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let chars: Vec<char> = script.chars().collect();
    let mut i = 0;
    let end_word = |word: &mut Option<String>, words: &mut Vec<String>| {
        if let Some(w) = word.take() {
            words.push(w);
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                end_word(&mut word, &mut words);
                i += 1;
            }
            '\n' | ';' => {
                end_word(&mut word, &mut words);
                if !words.is_empty() {
                    cmds.push(std::mem::take(&mut words));
                }
                i += 1;
            }
            '#' if word.is_none() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated single quote".into()),
                        Some('\'') => break,
                        Some(&ch) => w.push(ch),
                    }
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated double quote".into()),
                        Some('"') => break,
                        Some('\\') => {
                            let next = *chars.get(i + 1).ok_or("backslash at end")?;
                            if matches!(next, '"' | '\\' | '$') {
                                w.push(next);
                            } else {
                                w.push('\\');
                                w.push(next);
                            }
                            i += 2;
                            continue;
                        }
                        Some('$') => {
                            let (value, used) = variable(&chars[i..], vars)?;
                            w.push_str(&value);
                            i += used;
                            continue;
                        }
                        Some(&ch) => w.push(ch),
                    }
                    i += 1;
                }
                i += 1;
            }
            '\\' => {
                let next = *chars.get(i + 1).ok_or("backslash at end")?;
                if next == '\n' {
                    return Err("line continuation".into());
                }
                word.get_or_insert_with(String::new).push(next);
                i += 2;
            }
            '$' => {
                let (value, used) = variable(&chars[i..], vars)?;
                word.get_or_insert_with(String::new).push_str(&value);
                i += used;
            }
            '{' | '}' | '|' | '&' | '<' | '>' => {
                return Err(format!("unquoted {c:?} at char {i}"));
            }
            other => {
                word.get_or_insert_with(String::new).push(other);
                i += 1;
            }
        }
    }
    end_word(&mut word, &mut words);
    if !words.is_empty() {
        cmds.push(words);
    }
    Ok(cmds)
}

/// `$name` or `${name}` at the start of `s`: its value and the characters used.
fn variable(s: &[char], vars: &HashMap<String, String>) -> Result<(String, usize), String> {
    let (name, used) = if s.get(1) == Some(&'{') {
        let close = s.iter().position(|&c| c == '}').ok_or("unterminated ${")?;
        (s[2..close].iter().collect::<String>(), close + 1)
    } else {
        let n = s[1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .count();
        if n == 0 {
            // A lone `$` is literal.
            return Ok(("$".into(), 1));
        }
        (s[1..1 + n].iter().collect::<String>(), 1 + n)
    };
    Ok((vars.get(&name).cloned().unwrap_or_default(), used))
}

/// `grub_create_loader_cmdline` with GRUB's `BOOT_IMAGE=` word first.
pub fn kernel_cmdline(file: &str, args: &[String]) -> String {
    let mut all = vec![file.to_string()];
    all.extend(args.iter().cloned());
    let mut out = String::from("BOOT_IMAGE=");
    for (i, a) in all.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let space = a.contains(' ');
        if space {
            out.push('"');
        }
        for c in a.chars() {
            if matches!(c, '\\' | '\'' | '"') {
                out.push('\\');
            }
            out.push(c);
        }
        if space {
            out.push('"');
        }
    }
    out
}

/// Runs a configuration along its success path: `if` conditions succeed, a `for`
/// loop runs its first round, `boot` ends the run.
pub fn run(script: &str, vars: &[(&str, &str)]) -> Result<Run, String> {
    let mut vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut out = Run::default();
    // Commands are re-lexed one at a time, so variables set by one are seen by the
    // next, as in GRUB.
    for line in script.lines() {
        for mut cmd in commands(line, &vars)? {
            while matches!(
                cmd.first().map(String::as_str),
                Some("if") | Some("then") | Some("do")
            ) {
                cmd.remove(0);
            }
            let Some(name) = cmd.first().cloned() else {
                continue;
            };
            let args = &cmd[1..];
            match name.as_str() {
                "fi" | "done" | "sleep" => {}
                "for" => {
                    // for VAR in A B C
                    let var = args.first().ok_or("for without a variable")?;
                    if args.get(1).map(String::as_str) != Some("in") {
                        return Err("for without in".into());
                    }
                    let first = args.get(2).ok_or("for without values")?;
                    vars.insert(var.clone(), first.clone());
                }
                "echo" => {
                    let words = match args.first().map(String::as_str) {
                        Some("--") => &args[1..],
                        Some(a) if a.starts_with('-') && a.len() > 1 => {
                            return Err(format!("echo would read {a:?} as an option"))
                        }
                        _ => args,
                    };
                    out.echoes.push(words.join(" "));
                }
                "source" => out.sourced.push(args.join(" ")),
                "regexp" => {
                    // regexp --set=1:VAR '^([^:]*)' STRING: the part before a colon.
                    let set = args.first().ok_or("regexp without --set")?;
                    let var = set
                        .strip_prefix("--set=1:")
                        .ok_or("regexp without --set=1:VAR")?;
                    if args.get(1).map(String::as_str) != Some("^([^:]*)") {
                        return Err("unexpected regexp".into());
                    }
                    let s = args.get(2).ok_or("regexp without a string")?;
                    let host = s.split(':').next().unwrap_or_default().to_string();
                    vars.insert(var.to_string(), host);
                }
                "linux" => {
                    let file = args.first().ok_or("linux without a file")?;
                    out.linux = Some((file.clone(), kernel_cmdline(file, &args[1..])));
                }
                "initrd" => out.initrds = args.to_vec(),
                "boot" => {
                    out.booted = true;
                    return Ok(out);
                }
                "exit" => {
                    out.exited = true;
                    return Ok(out);
                }
                other => return Err(format!("unknown command {other:?}")),
            }
        }
    }
    Ok(out)
}
