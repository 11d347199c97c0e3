//! Renders machine specs as a text table, a Mermaid `stateDiagram-v2` or Graphviz DOT.

use super::MachineSpec;
use std::fmt::Write;

/// Output format of `vigil machines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderFormat {
    /// Text tables of states, events and transitions.
    Table,
    /// A Mermaid `stateDiagram-v2`.
    Mermaid,
    /// A Graphviz DOT digraph.
    Dot,
}

/// Renders `specs` in `format` as one document.
///
/// A single spec renders alone, under its own state names. Several render as one diagram:
/// in Mermaid each machine is a composite state, in DOT a cluster, and every id is prefixed
/// by its machine's name so that states of the same name in two machines stay distinct.
/// Tables are printed one after another, separated by a blank line.
pub fn render(specs: &[&MachineSpec], format: RenderFormat) -> String {
    match format {
        RenderFormat::Table => specs
            .iter()
            .map(|spec| table(spec))
            .collect::<Vec<_>>()
            .join("\n"),
        RenderFormat::Mermaid => mermaid(specs),
        RenderFormat::Dot => dot(specs),
    }
}

/// Where one machine's lines sit in the document being rendered: alone in it, or as one of
/// several machines, each inside its own composite state or cluster.
#[derive(Debug, Clone, Copy)]
struct Scope<'a> {
    /// The machine whose name prefixes every id, or `None` when the machine is alone.
    machine: Option<&'a str>,
    /// The indentation of the machine's top-level lines.
    indent: &'a str,
}

impl<'a> Scope<'a> {
    /// A machine alone in its document: ids are the plain names.
    fn alone() -> Scope<'static> {
        Scope {
            machine: None,
            indent: "    ",
        }
    }

    /// One machine among several, one level down inside its composite state or cluster.
    fn within(spec: &'a MachineSpec) -> Scope<'a> {
        Scope {
            machine: Some(&spec.machine),
            indent: "        ",
        }
    }

    /// The id of the state or superstate `name`: `failure_idle` among several machines,
    /// `idle` alone.
    fn id(&self, name: &str) -> String {
        match self.machine {
            Some(machine) => format!("{machine}_{name}"),
            None => name.to_string(),
        }
    }
}

fn table(spec: &MachineSpec) -> String {
    let mut out = format!(
        "{}: {}\ninitial state: {}\n\nSTATES\n",
        spec.machine, spec.summary, spec.initial
    );
    let states: Vec<Vec<String>> = spec
        .states
        .iter()
        .map(|state| {
            let mut place = state
                .superstate
                .clone()
                .map(|s| format!("in {s}"))
                .unwrap_or_default();
            if state.terminal {
                place = "terminal".to_string();
            }
            vec![
                state.name.clone(),
                place,
                commands(&state.commands),
                state.doc.clone(),
            ]
        })
        .collect();
    out.push_str(&columns(&states));
    out.push_str("\nEVENTS\n");
    let events: Vec<Vec<String>> = spec
        .events
        .iter()
        .map(|e| vec![e.name.clone(), e.doc.clone()])
        .collect();
    out.push_str(&columns(&events));
    out.push_str("\nTRANSITIONS\n");
    let mut rows = vec![["FROM", "EVENT", "WHEN", "TO", "LEVEL", "COMMANDS", "LOG"]
        .map(String::from)
        .to_vec()];
    for transition in &spec.transitions {
        for from in transition.from.iter() {
            rows.push(vec![
                from.to_string(),
                transition.event.clone(),
                transition.when.clone().unwrap_or_else(|| "-".to_string()),
                transition.to.clone(),
                transition.level.clone(),
                commands(&transition.commands),
                transition.log.clone(),
            ]);
        }
    }
    out.push_str(&columns(&rows));
    out
}

/// A list of commands as one column: `publish+recover`, or `-` for none.
fn commands(commands: &[String]) -> String {
    match commands.is_empty() {
        true => "-".to_string(),
        false => commands.join("+"),
    }
}

/// Lays rows out in left-aligned columns; the last column is not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A transition label: the event, and its condition in brackets. Mermaid ends a label at
/// `:` or `;`, so those become commas.
fn label(event: &str, when: Option<&String>) -> String {
    let text = match when {
        Some(when) => format!("{event} [{when}]"),
        None => event.to_string(),
    };
    text.replace([':', ';'], ",")
}

/// The Mermaid `stateDiagram-v2` of `specs`: one machine alone, or several machines, each
/// a composite state.
fn mermaid(specs: &[&MachineSpec]) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    match specs {
        [spec] => mermaid_machine(&mut out, spec, Scope::alone()),
        _ => {
            for spec in specs {
                let _ = writeln!(out, "    state {} {{", spec.machine);
                mermaid_machine(&mut out, spec, Scope::within(spec));
                out.push_str("    }\n");
            }
        }
    }
    out
}

/// Appends `spec`'s lines of a Mermaid state diagram to `out`: its summary, each state's
/// description, its start and terminal arrows, every transition, and its superstates as
/// comments.
fn mermaid_machine(out: &mut String, spec: &MachineSpec, scope: Scope<'_>) {
    let indent = scope.indent;
    let _ = writeln!(
        out,
        "{indent}%% {}: {}",
        spec.machine,
        spec.summary.replace(['\n'], " ")
    );
    for state in &spec.states {
        let id = scope.id(&state.name);
        if scope.machine.is_some() {
            let _ = writeln!(out, "{indent}state \"{}\" as {id}", state.name);
        }
        let _ = writeln!(out, "{indent}{id} : {}", state.doc.replace([':', ';'], ","));
    }
    let _ = writeln!(out, "{indent}[*] --> {}", scope.id(&spec.initial));
    for transition in &spec.transitions {
        for from in transition.from.iter() {
            let _ = writeln!(
                out,
                "{indent}{} --> {} : {}",
                scope.id(from),
                scope.id(&transition.to),
                label(&transition.event, transition.when.as_ref())
            );
        }
    }
    for state in spec.states.iter().filter(|state| state.terminal) {
        let _ = writeln!(out, "{indent}{} --> [*]", scope.id(&state.name));
    }
    for superstate in &spec.superstates {
        let members: Vec<&str> = spec
            .states
            .iter()
            .filter(|state| state.superstate.as_deref() == Some(superstate.name.as_str()))
            .map(|state| state.name.as_str())
            .collect();
        let _ = writeln!(
            out,
            "{indent}%% superstate {}: {}",
            superstate.name,
            members.join(", ")
        );
    }
}

/// `text` as a DOT quoted string.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Graphviz digraph of `specs`: one machine alone, or several machines, each a cluster
/// labelled with its name.
fn dot(specs: &[&MachineSpec]) -> String {
    let name = match specs {
        [spec] => spec.machine.as_str(),
        _ => "machines",
    };
    let mut out = format!(
        "digraph {} {{\n    rankdir=LR;\n    node [shape=box, style=rounded];\n",
        quote(name)
    );
    match specs {
        [spec] => dot_machine(&mut out, spec, Scope::alone()),
        _ => {
            for spec in specs {
                let _ = writeln!(
                    out,
                    "    subgraph {} {{",
                    quote(&format!("cluster_{}", spec.machine))
                );
                let _ = writeln!(out, "        label={};", quote(&spec.machine));
                dot_machine(&mut out, spec, Scope::within(spec));
                out.push_str("    }\n");
            }
        }
    }
    out.push_str("}\n");
    out
}

/// Appends `spec`'s statements of a DOT digraph to `out`: its start point, its states (a
/// cluster per superstate, terminal states drawn double) and every transition.
fn dot_machine(out: &mut String, spec: &MachineSpec, scope: Scope<'_>) {
    let indent = scope.indent;
    let id = |name: &str| quote(&scope.id(name));
    let start = match scope.machine {
        Some(machine) => quote(&format!("__start_{machine}")),
        None => "__start".to_string(),
    };
    let _ = writeln!(out, "{indent}{start} [shape=point];");
    let _ = writeln!(out, "{indent}{start} -> {};", id(&spec.initial));
    let emit_states = |out: &mut String, superstate: Option<&str>, indent: &str| {
        for state in spec
            .states
            .iter()
            .filter(|state| state.superstate.as_deref() == superstate)
        {
            let label = match scope.machine {
                Some(_) => format!("label={}, ", quote(&state.name)),
                None => String::new(),
            };
            let shape = if state.terminal {
                ", peripheries=2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{indent}{} [{label}tooltip={}{shape}];",
                id(&state.name),
                quote(&state.doc)
            );
        }
    };
    emit_states(out, None, indent);
    let inner = format!("{indent}    ");
    for superstate in &spec.superstates {
        let _ = writeln!(
            out,
            "{indent}subgraph {} {{",
            quote(&format!("cluster_{}", scope.id(&superstate.name)))
        );
        let _ = writeln!(out, "{inner}label={};", quote(&superstate.name));
        emit_states(out, Some(&superstate.name), &inner);
        let _ = writeln!(out, "{indent}}}");
    }
    for transition in &spec.transitions {
        for from in transition.from.iter() {
            let label = match &transition.when {
                Some(when) => format!("{} [{when}]", transition.event),
                None => transition.event.clone(),
            };
            let _ = writeln!(
                out,
                "{indent}{} -> {} [label={}];",
                id(from),
                id(&transition.to),
                quote(&label)
            );
        }
    }
}
