"""One self-contained HTML page: a sortable table whose rows open a larger view.

Everything is inline (CSS, script, pictures as ``data:`` URIs): the file opens from disk,
offline, and can be mailed on its own. No framework: the table is built here, the script sorts
it and shows the clicked row.

Sorting: click a column header (again to reverse). Each cell's ``data-value`` is what it sorts
by (numbers numerically; empty cells always last). The sort and the open case are kept in the
address's fragment (``#sort=COLUMN:asc`` / ``&case=ID``), so a link or a reload shows the same
view, and the page applies a fragment it is opened with through the same click handlers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Column:
    """key: stable identifier (used in ``#sort=``). title: header text. numeric: sort as numbers."""

    key: str
    title: str
    numeric: bool = True


@dataclass
class Cell:
    """text: what the cell shows (HTML-escaped); value: what it sorts by (None: empty, sorts
    last); markup: trusted HTML shown instead of text (pictures); css: extra class names."""

    text: str = ""
    value: float | str | None = None
    markup: str | None = None
    css: str = ""


@dataclass
class Row:
    row_id: str
    cells: list[Cell]
    detail_markup: str = ""
    css: str = ""
    """detail_markup: trusted HTML for the larger view, followed there by the row's pictures
    (cells with css ``pictures``) at full size."""


@dataclass
class Section:
    """A titled block of trusted HTML (tables, pictures) shown above or below the main table."""

    title: str
    markup: str


@dataclass
class Page:
    title: str
    summary: str
    columns: list[Column] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    footer: str = ""


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.2em 0 .4em}
p.summary{margin:.2em 0 1em;color:#444}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:middle}
td.text,th.text{text-align:left}
#cases th{cursor:pointer;background:#eef1f5;position:sticky;top:0;user-select:none;white-space:nowrap}
#cases th[aria-sort=ascending]::after{content:" \\25B2"}#cases th[aria-sort=descending]::after{content:" \\25BC"}
#cases tbody tr{cursor:pointer}#cases tbody tr:hover{background:#f3f7ff}
tr.flagged td.flags{background:#fff0f0;color:#a00}
td.flags{text-align:left;min-width:12em;max-width:22em;font-size:12px}
td.pictures{white-space:nowrap;text-align:left}
td.pictures img{height:64px;margin:1px;border:1px solid #ccc}
td.empty{color:#bbb}
#detail{position:fixed;inset:3% 4%;background:#fff;border:1px solid #888;box-shadow:0 4px 30px #0005;overflow:auto;
padding:1em;z-index:10}
#detail img{max-width:100%;height:auto;display:block;margin:.5em 0;border:none}
#detail button{float:right;font-size:1em}
.plain th{background:#eef1f5}
.figures img{max-width:48%;margin:.3em;border:1px solid #ccc}
footer{margin-top:1.5em;font-size:12px;color:#666}
"""

_SCRIPT = """
(function(){
  const table=document.getElementById('cases');
  if(!table)return;
  const body=table.tBodies[0], headers=[...table.tHead.rows[0].cells];
  const detail=document.getElementById('detail'), detailBody=document.getElementById('detail-body');
  let state={sort:null,dir:'asc',open:null};
  function writeHash(){
    const parts=[];
    if(state.sort)parts.push('sort='+state.sort+':'+state.dir);
    if(state.open)parts.push('case='+encodeURIComponent(state.open));
    history.replaceState(null,'',parts.length?'#'+parts.join('&'):location.pathname);
  }
  function key(cell,numeric){
    const raw=cell.dataset.value;
    if(raw===undefined||raw==='')return null;
    return numeric?parseFloat(raw):raw.toLowerCase();
  }
  function sortBy(th,dir){
    const index=headers.indexOf(th), numeric=th.dataset.type==='number';
    const rows=[...body.rows];
    rows.sort((a,b)=>{
      const x=key(a.cells[index],numeric), y=key(b.cells[index],numeric);
      if(x===null&&y===null)return 0; if(x===null)return 1; if(y===null)return -1;
      const c=x<y?-1:x>y?1:0; return dir==='asc'?c:-c;
    });
    rows.forEach(r=>body.appendChild(r));
    headers.forEach(h=>h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort',dir==='asc'?'ascending':'descending');
    state.sort=th.dataset.key; state.dir=dir; writeHash();
  }
  headers.forEach(th=>th.addEventListener('click',()=>{
    const dir=(state.sort===th.dataset.key&&state.dir==='asc')?'desc':'asc';
    sortBy(th,dir);
  }));
  function openRow(row){
    const template=row.querySelector('template');
    detailBody.innerHTML='';
    const heading=document.createElement('h2'); heading.textContent=row.dataset.id; detailBody.appendChild(heading);
    if(template)detailBody.appendChild(template.content.cloneNode(true));
    // The row's own pictures, shown large (not stored twice in the file).
    row.querySelectorAll('td.pictures img').forEach(img=>detailBody.appendChild(img.cloneNode()));
    detail.hidden=false; state.open=row.dataset.id; writeHash();
  }
  function closeDetail(){detail.hidden=true; state.open=null; writeHash();}
  body.addEventListener('click',e=>{const row=e.target.closest('tr'); if(row)openRow(row);});
  document.getElementById('detail-close').addEventListener('click',closeDetail);
  document.addEventListener('keydown',e=>{if(e.key==='Escape')closeDetail();});
  // A fragment the page is opened with: the same clicks a reader would make.
  const wanted=new URLSearchParams(location.hash.slice(1));
  const sort=wanted.get('sort');
  if(sort){
    const [column,dir]=sort.split(':'), th=headers.find(h=>h.dataset.key===column);
    if(th){th.click(); if(dir==='desc')th.click();}
  }
  const open=wanted.get('case');
  if(open){const row=[...body.rows].find(r=>r.dataset.id===open); if(row)row.click();}
  document.body.dataset.ready='true';
})();
"""


def _attribute(value) -> str:
    return html.escape("" if value is None else (repr(float(value)) if isinstance(value, (int, float)) else str(value)),
                       quote=True)


def render_page(page: Page) -> str:
    """The page as one HTML string."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(page.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(page.title)}</h1>",
        f'<p class="summary">{html.escape(page.summary)}</p>',
    ]
    for section in page.sections:
        out.append(f"<section><h2>{html.escape(section.title)}</h2>{section.markup}</section>")
    if page.columns:
        out.append('<table id="cases"><thead><tr>')
        for column in page.columns:
            kind = "number" if column.numeric else "text"
            css = "" if column.numeric else ' class="text"'
            out.append(f'<th data-key="{html.escape(column.key, quote=True)}" data-type="{kind}"{css} '
                       f'title="sort by {html.escape(column.title, quote=True)}">{html.escape(column.title)}</th>')
        out.append("</tr></thead><tbody>")
        for row in page.rows:
            css = f' class="{row.css}"' if row.css else ""
            out.append(f'<tr data-id="{html.escape(row.row_id, quote=True)}"{css}>')
            for column, cell in zip(page.columns, row.cells):
                classes = " ".join(c for c in ("" if column.numeric else "text", cell.css,
                                               "empty" if cell.value is None and not cell.markup else "") if c)
                content = cell.markup if cell.markup is not None else html.escape(cell.text)
                out.append(f'<td class="{classes}" data-value="{_attribute(cell.value)}">{content}</td>')
            out.append(f"<template>{row.detail_markup}</template></tr>")
        out.append("</tbody></table>")
        out.append('<div id="detail" hidden><button id="detail-close" title="close (Esc)">close</button>'
                   '<div id="detail-body"></div></div>')
    if page.footer:
        out.append(f"<footer>{html.escape(page.footer)}</footer>")
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A small static table (escaped text), e.g. the cross-validation table."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"text" if i == 0 else ""}">{html.escape(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="plain"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
