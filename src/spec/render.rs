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

/// Renders `spec` in `format`.
pub fn render(spec: &MachineSpec, format: RenderFormat) -> String {
    match format {
        RenderFormat::Table => table(spec),
        RenderFormat::Mermaid => mermaid(spec),
        RenderFormat::Dot => dot(spec),
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

fn mermaid(spec: &MachineSpec) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    let _ = writeln!(
        out,
        "    %% {}: {}",
        spec.machine,
        spec.summary.replace(['\n'], " ")
    );
    for state in &spec.states {
        let _ = writeln!(
            out,
            "    {} : {}",
            state.name,
            state.doc.replace([':', ';'], ",")
        );
    }
    let _ = writeln!(out, "    [*] --> {}", spec.initial);
    for transition in &spec.transitions {
        for from in transition.from.iter() {
            let _ = writeln!(
                out,
                "    {from} --> {} : {}",
                transition.to,
                label(&transition.event, transition.when.as_ref())
            );
        }
    }
    for state in spec.states.iter().filter(|state| state.terminal) {
        let _ = writeln!(out, "    {} --> [*]", state.name);
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
            "    %% superstate {}: {}",
            superstate.name,
            members.join(", ")
        );
    }
    out
}

fn dot(spec: &MachineSpec) -> String {
    let quote = |text: &str| format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = format!(
        "digraph {} {{\n    rankdir=LR;\n    node [shape=box, style=rounded];\n",
        quote(&spec.machine)
    );
    out.push_str("    __start [shape=point];\n");
    let _ = writeln!(out, "    __start -> {};", quote(&spec.initial));
    let emit_states = |out: &mut String, superstate: Option<&str>, indent: &str| {
        for state in spec
            .states
            .iter()
            .filter(|state| state.superstate.as_deref() == superstate)
        {
            let shape = if state.terminal {
                ", peripheries=2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{indent}{} [tooltip={}{shape}];",
                quote(&state.name),
                quote(&state.doc)
            );
        }
    };
    emit_states(&mut out, None, "    ");
    for superstate in &spec.superstates {
        let _ = writeln!(
            out,
            "    subgraph {} {{",
            quote(&format!("cluster_{}", superstate.name))
        );
        let _ = writeln!(out, "        label={};", quote(&superstate.name));
        emit_states(&mut out, Some(&superstate.name), "        ");
        out.push_str("    }\n");
    }
    for transition in &spec.transitions {
        for from in transition.from.iter() {
            let label = match &transition.when {
                Some(when) => format!("{} [{when}]", transition.event),
                None => transition.event.clone(),
            };
            let _ = writeln!(
                out,
                "    {} -> {} [label={}];",
                quote(from),
                quote(&transition.to),
                quote(&label)
            );
        }
    }
    out.push_str("}\n");
    out
}
