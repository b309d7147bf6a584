"""The training-content summary as Markdown, in the template's numbering."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from licensing.models.summary import Dataset, Sources, TrainingContentSummary


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _tdm(value: object) -> str:
    """A TDM reservation as recorded (true/false or 'reserved'/'none'), in words."""
    if value in (True, "reserved"):
        return "reserved"
    return "none seen" if value in (False, "none") else ""


def _yes_no(used: bool) -> str:
    return "Yes" if used else "No"


def _datasets(datasets: Sequence[Dataset]) -> list[str]:
    return _table(
        ["Source", "Corpus", "Modality", "Rights holder", "Licence", "Bytes", "Share"],
        (
            [
                d.source,
                f"{d.product}@{d.version}",
                d.modality,
                d.rights_holder or "",
                d.licence,
                d.bytes,
                f"{d.share:.2%}",
            ]
            for d in datasets
        ),
    )


def _sources(title: str, section: Sources) -> list[str]:
    lines = [f"### {title}", "", f"Used: {_yes_no(section.used)}", ""]
    if section.used:
        lines += [f"Modalities: {', '.join(section.modalities)}", "", *_datasets(section.datasets)]
    return lines


def render(summary: TrainingContentSummary) -> str:
    g = summary.general
    lines = [
        f"# Public summary of training content: {_cell(g.model.name)} {_cell(g.model.version)}",
        "",
        f"Following the {summary.template}. Manifest digest `{summary.manifest_digest}`.",
        "",
        "## 1. General information",
        "",
        "### 1.1 Provider identification",
        "",
        f"Provider: {_cell(g.provider.org)}",
        "",
        "### 1.2 Model identification",
        "",
        f"Model: {_cell(g.model.name)}, version {_cell(g.model.version)}",
        "",
    ]
    if g.model.description:
        lines += [_cell(g.model.description), ""]
    lines += [
        "### 1.3 Modalities, overall training data size and other characteristics",
        "",
        f"Modalities: {', '.join(g.modalities)}",
        "",
        *_table(
            ["Modality", "Size (template bin)", "Estimate", "Files", "Bytes", "Basis"],
            (
                [
                    s.modality,
                    s.bin or "not determined",
                    f"{s.estimate} {s.unit}" if s.estimate is not None else "",
                    s.files,
                    s.bytes,
                    s.basis,
                ]
                for s in g.training_data_size
            ),
        ),
        f"Languages: {', '.join(g.languages) or 'not recorded'}",
        "",
        f"Latest date of data collection: {g.latest_collection_date or 'not recorded'}",
        "",
        f"Sizes of sources are {summary.size_basis}.",
        "",
        "## 2. List of data sources",
        "",
        *_sources("2.1 Publicly available datasets", summary.public_datasets),
        *_sources("2.2 Private datasets licensed from third parties", summary.licensed_data),
    ]
    if summary.licensed_data.used:
        lines += [
            f"Rights holders: {', '.join(_cell(r) for r in summary.licensed_data.rights_holders) or 'not recorded'}",
            "",
            f"Licences: {', '.join(summary.licensed_data.licences)}",
            "",
        ]
    crawled = summary.crawled_data
    lines += _sources("2.3 Data crawled and scraped from online sources", crawled)
    if crawled.used:
        lines += [
            f"Crawlers: {', '.join(_cell(c) for c in crawled.crawlers) or 'not recorded'}",
            "",
            "Collection periods:",
            "",
            *_table(
                ["Source", "From", "To"],
                ([p.source, p.collected_from or "", p.collected_to or ""] for p in crawled.collection_periods),
            ),
            f"Most relevant domains ({crawled.top_domains_rule}; {crawled.domains_total} domains in all):",
            "",
            *_table(["Domain", "Bytes", "Share"], ([d.domain, d.bytes, f"{d.share:.2%}"] for d in crawled.top_domains)),
        ]
    lines += [
        *_sources("2.4 User data", summary.user_data),
        *_sources("2.5 Synthetic data", summary.synthetic_data),
    ]
    if summary.synthetic_data.used:
        lines += [f"Generators: {', '.join(_cell(g) for g in summary.synthetic_data.generators)}", ""]
    lines += [
        *_sources("2.6 Other sources of data", summary.other_sources),
        "## 3. Data processing aspects",
        "",
        "### 3.1 Respect of reservation of rights from the text and data mining exception",
        "",
        summary.tdm_opt_out.description,
        "",
    ]
    if summary.tdm_opt_out.measures:
        lines += _table(
            ["Source", "Corpus", "robots.txt", "TDM reservation", "Checked at", "User agent"],
            (
                [
                    m.source,
                    f"{m.product}@{m.version}",
                    m.robots_txt,
                    _tdm(m.tdm_reservation),
                    m.checked_at,
                    m.user_agent,
                ]
                for m in summary.tdm_opt_out.measures
            ),
        )
    lines += ["### 3.2 Removal of illegal content", "", summary.illegal_content.description, ""]
    if summary.illegal_content.measures:
        lines += _table(
            ["Corpus", "Stage", "Tool", "Description", "Metrics"],
            (
                [
                    f"{m.product}@{m.version}",
                    m.stage,
                    m.tool,
                    m.description,
                    ", ".join(f"{k}={v:g}" for k, v in sorted(m.metrics.items())),
                ]
                for m in summary.illegal_content.measures
            ),
        )
    return "\n".join(lines).rstrip() + "\n"
