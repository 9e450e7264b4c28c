"""The analyzer's ``index.html``: one page showing every graph, refreshed every 5 minutes.

Same document as the original's (XHTML 1.0 Transitional, the range index floating left, ids
built from the labels), so existing links into it keep working; each ``img`` also gets the
graph's title as ``alt`` (XHTML requires one) and every value is escaped.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Sequence

HEADER = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
      "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
  <head>
    <meta http-equiv="content-type" content="text/html;charset=UTF-8" />
    <meta http-equiv="Refresh" content="300" />
    <meta http-equiv="Pragma" content="no-cache" />
    <style>
ul.index li.range
{
  display: block;
  float: left;
  margin-bottom: 1em;
  margin-right: 1em;
}

h2
{
  clear: both;
}
    </style>
    <title>milter-manager statistics</title>
  </head>

  <body>
    <h1>milter-manager statistics</h1>
"""

FOOTER = """  </body>
</html>
"""

#: ``(range label, [(PNG file name, graph title), ...])`` in display order
Sections = Sequence[tuple[str, Sequence[tuple[str, str]]]]


def normalize(value: str) -> str:
    """Lower case, runs of spaces and colons → ``-`` (``Last Day`` → ``last-day``)."""
    return re.sub(r"[ :]+", "-", value.lower())


def graph_id(label: str, title: str) -> str:
    """``last-day-milter-manager-status`` for ``Last Day`` / ``milter manager: status``."""
    return f"{normalize(label)}-{normalize(title)}"


def generate(sections: Sections) -> str:
    """The page: the index of ranges and graphs, then per range its heading and images.
    Ranges without graphs are left out, as in the original."""
    escape = html.escape
    parts = [HEADER, '<ul class="index">\n']
    for label, graphs in sections:
        if not graphs:
            continue
        parts.append(f'  <li class="range"><a href="#{escape(normalize(label))}">{escape(label)}</a>\n')
        parts.append('    <ul class="graph-index">\n')
        for _file_name, title in graphs:
            parts.append(f'      <li><a href="#{escape(graph_id(label, title))}">{escape(title)}</a></li>\n')
        parts.append("    </ul>\n  </li>\n")
    parts.append("</ul>\n")
    for label, graphs in sections:
        if not graphs:
            continue
        parts.append(f'<h2 id="{escape(normalize(label))}">{escape(label)}</h2>\n')
        for file_name, title in graphs:
            source = urllib.parse.quote(file_name)
            parts.append(f'  <p id="{escape(graph_id(label, title))}">\n'
                         f'    <img src="{escape(source)}" alt="{escape(title)}" />\n'
                         f"  </p>\n")
        parts.append("\n")
    parts.append(FOOTER)
    return "".join(parts)
