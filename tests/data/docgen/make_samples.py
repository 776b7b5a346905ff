"""Regenerate the documentation-generator samples in this folder (committed, a few KB each).

    python tests/data/docgen/make_samples.py OUT_DIR [MAKER ...]

One short manual (CONTENT below, written for these tests) is rendered by each generator a user's
HTML documentation comes from: Sphinx, MkDocs (material), pandoc, GNU Texinfo (`makeinfo --html`),
Doxygen, Javadoc, DocBook (xsltproc with docbook-xsl, XHTML with an XML declaration), groff's man
page HTML and man2html. Needs those tools (Debian: texinfo pandoc doxygen xsltproc docbook-xsl
docbook-xml groff man2html; PyPI: sphinx mkdocs mkdocs-material; a JDK). The Publican page is
written after Publican's output, which no maintained package makes now; `handwritten` is a plain page.
tests/test_docgen.py reads the pages and checks what reaches segments.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# (heading, paragraphs): each section is 700-1000 characters, so it passes the default 600-3000 window
CONTENT = [
    ("Installing tidepool", [
        "Tidepool is a small program that keeps two folders in step over a local network or a slow link. "
        "It is distributed as a single executable for each supported system, and it needs no service "
        "running in the background: every synchronisation is started by a command or by a timer that you "
        "set up yourself. Nothing else has to be installed beside it.",
        "To install it, download the archive for your system, unpack it into a folder that is on your "
        "search path, and check that the program starts by asking it for its version. The first run "
        "creates a configuration folder in your home directory and writes a commented example file that "
        "explains every setting it knows about.",
    ]),
    ("Configuration files", [
        "Each pair of folders that tidepool keeps in step is described by a profile. A profile is a plain "
        "text file with one setting per line: the two folder locations, the patterns of files to leave "
        "out, how often to synchronise, and what to do when both sides changed the same file since the "
        "last run. A profile can also name a second configuration file whose settings it takes over.",
        "Profiles live in the configuration folder and are named after the file that holds them. Settings "
        "that are missing take their default value, and an unknown setting stops the program before it "
        "copies anything, with a message that names the file, the line and the closest known setting.",
    ]),
    ("Synchronising folders", [
        "A synchronisation compares the two folders of a profile and copies every file that is newer on "
        "one side to the other side. Files are first written under a temporary name and renamed when they "
        "are complete, so an interrupted run never leaves half of a file behind, and the next run simply "
        "continues where the last one stopped. Two runs of one profile never work at the same time.",
        "Large files are compared block by block, and only the blocks that differ travel over the network. "
        "The summary at the end of a run lists how many files were copied in each direction, how many "
        "bytes were sent, and which files were left alone because a pattern of the profile excludes them.",
    ]),
    ("Resolving conflicts", [
        "A conflict happens when the same file changed on both sides since the last synchronisation. "
        "Tidepool never picks a winner silently: by default it keeps both versions, renames the older "
        "one with the name of the machine it came from, and reports the conflict in the summary so that "
        "you can compare the two files and keep the right one. Nothing is ever deleted by a conflict.",
        "A profile can choose another rule for its conflicts: always keep the newest version, always keep "
        "the version of one named side, or stop the run and ask. Whatever the rule, the replaced version "
        "is moved to a history folder and kept for thirty days, so a wrong decision can always be undone.",
    ]),
]
CODE = "tidepool --version\ntidepool sync photos"


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def sphinx(work: Path, out: Path) -> None:
    src = work / "sphinx"
    src.mkdir()
    (src / "conf.py").write_text("project = 'Tidepool'\nhtml_theme = 'alabaster'\n")
    rst = ["Tidepool manual", "===============", ""]
    for h, paras in CONTENT:
        rst += [h, "-" * len(h), ""] + [p + "\n" for p in paras]
        if h == "Installing tidepool":
            rst += ["::", ""] + ["    " + line for line in CODE.splitlines()] + [""]
    (src / "index.rst").write_text("\n".join(rst))
    run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src), str(work / "sphinx_out")], work)
    shutil.copy(work / "sphinx_out" / "index.html", out / "sphinx.html")


def markdown() -> str:
    md = ["# Tidepool manual", ""]
    for h, paras in CONTENT:
        md += [f"## {h}", ""] + [p + "\n" for p in paras]
        if h == "Installing tidepool":
            md += ["```", CODE, "```", ""]
    return "\n".join(md)


def mkdocs(work: Path, out: Path) -> None:
    src = work / "mkdocs"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "index.md").write_text(markdown())
    (src / "mkdocs.yml").write_text("site_name: Tidepool\ntheme:\n  name: material\n"
                                    "markdown_extensions:\n  - toc:\n      permalink: true\n")
    run([sys.executable, "-m", "mkdocs", "build", "-q"], src)
    shutil.copy(src / "site" / "index.html", out / "mkdocs-material.html")


def pandoc(work: Path, out: Path) -> None:
    (work / "p.md").write_text(markdown())
    run(["pandoc", "-s", "--section-divs", "--metadata", "title=Tidepool", "-o", str(out / "pandoc.html"), "p.md"], work)


def texinfo(work: Path, out: Path) -> None:
    texi = ["\\input texinfo", "@setfilename tidepool.info", "@settitle Tidepool manual", "@node Top",
            "@top Tidepool manual", ""]
    for h, paras in CONTENT:
        texi += [f"@node {h}", f"@chapter {h}", ""] + [p + "\n" for p in paras]
        if h == "Installing tidepool":
            texi += ["@example", CODE, "@end example", ""]
    texi += ["@bye"]
    (work / "t.texi").write_text("\n".join(texi))
    run(["makeinfo", "--html", "--no-split", "-o", str(out / "texinfo.html"), "t.texi"], work)


def doxygen(work: Path, out: Path) -> None:
    src = work / "dox"
    src.mkdir()
    page = ["/** \\mainpage Tidepool manual", ""]
    for i, (h, paras) in enumerate(CONTENT):
        page += [f"\\section s{i} {h}", ""] + [p + "\n" for p in paras]
    (src / "manual.h").write_text("\n".join(page) + "*/\n")
    (src / "Doxyfile").write_text("PROJECT_NAME = Tidepool\nINPUT = manual.h\nOUTPUT_DIRECTORY = out\n"
                                  "GENERATE_LATEX = NO\nQUIET = YES\n")
    run(["doxygen", "Doxyfile"], src)
    shutil.copy(src / "out" / "html" / "index.html", out / "doxygen.html")


def javadoc(work: Path, out: Path) -> None:
    src = work / "java" / "tidepool"
    src.mkdir(parents=True)
    body = ["/**", " * The tidepool manual.", " *"]
    for h, paras in CONTENT:
        body += [f" * <h2>{h}</h2>"] + [f" * <p>{p}</p>" for p in paras]
    body += [" */", "public class Manual {", "    /** Starts a synchronisation. */", "    public void sync() {}", "}"]
    (src / "Manual.java").write_text("package tidepool;\n\n" + "\n".join(body) + "\n")
    run(["javadoc", "-quiet", "-d", "jd", "tidepool/Manual.java"], work / "java")
    shutil.copy(work / "java" / "jd" / "tidepool" / "Manual.html", out / "javadoc.html")


def docbook(work: Path, out: Path) -> None:
    from xml.sax.saxutils import escape

    xml = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<!DOCTYPE article PUBLIC "-//OASIS//DTD DocBook XML V4.5//EN" '
           '"http://www.oasis-open.org/docbook/xml/4.5/docbookx.dtd">',
           "<article><title>Tidepool manual</title>"]
    for h, paras in CONTENT:
        xml += [f"<section><title>{escape(h)}</title>"] + [f"<para>{escape(p)}</para>" for p in paras]
        if h == "Installing tidepool":
            xml += [f"<screen>{escape(CODE)}</screen>"]
        xml += ["</section>"]
    xml += ["</article>"]
    (work / "d.xml").write_text("\n".join(xml))
    run(["xsltproc", "--nonet", "--output", str(out / "docbook-xsl.html"),
         "/usr/share/xml/docbook/stylesheet/docbook-xsl/xhtml/docbook.xsl", "d.xml"], work)


def manpage(work: Path, out: Path) -> None:
    roff = ['.TH TIDEPOOL 1 "2026-11-30" "tidepool 1.0" "User Commands"', ".SH NAME",
            "tidepool \\- keep two folders in step", ".SH SYNOPSIS", ".B tidepool", "[\\fIoptions\\fR] \\fIprofile\\fR",
            ".SH DESCRIPTION"]
    for p in CONTENT[0][1] + CONTENT[2][1]:
        roff += [p, ".PP"]
    roff += [".SH FILES"] + [p + "\n.PP" for p in CONTENT[1][1]]
    roff += [".SH CONFLICTS"] + [p + "\n.PP" for p in CONTENT[3][1]]
    (work / "tidepool.1").write_text("\n".join(roff) + "\n")
    html = subprocess.run(["groff", "-man", "-Thtml", "tidepool.1"], cwd=work, check=True, capture_output=True).stdout
    (out / "groff-man.html").write_bytes(html)
    html = subprocess.run(["man2html", "-r", "tidepool.1"], cwd=work, check=True, capture_output=True).stdout
    (out / "man2html.html").write_bytes(html.split(b"\n\n", 1)[1] if html.startswith(b"Content-type") else html)


def publican(work: Path, out: Path) -> None:
    """Publican's chunked XHTML as its pages are laid out (XML declaration, XHTML doctype, docnav
    lists, `div.para` paragraphs, numbered titles with an anchor inside); no maintained package
    makes it any more, so the page is written here."""
    from html import escape

    secs = []
    for i, (h, paras) in enumerate(CONTENT, 1):
        body = "".join(f'<div class="para">\n\t\t{escape(p)}\n\t</div>' for p in paras)
        if i == 1:
            body += f'<pre class="screen">{escape(CODE)}</pre>'
        secs.append(f'<div xml:lang="en-US" class="section" id="sect-Tidepool-{i}" lang="en-US"><div class="titlepage">'
                    f'<div><div><h3 class="title"><a id="idm4032{i}"></a>6.1.{i}. {escape(h)}</h3></div></div></div>'
                    f'{body}</div>')
    nav = ('<li class="previous"><a accesskey="p" href="ch05.html"><strong>Prev</strong>Chapter 5. Setup</a></li>'
           '<li class="up"><a accesskey="u" href="#"><strong>Up</strong></a></li><li class="home"><a accesskey="h" '
           'href="index.html"><strong>Home</strong></a></li><li class="next"><a accesskey="n" href="ch06s02.html">'
           '<strong>Next</strong>6.2. Keys</a></li>')
    (out / "publican.html").write_text(
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 '
        'Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml">'
        '<head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8" /><title>6.1. Using tidepool</title>'
        '<link rel="stylesheet" type="text/css" href="Common_Content/css/default.css" /><meta name="generator" '
        'content="publican 2.8" /></head><body><p id="title"><a class="left" href="http://www.example.org"><img '
        'src="Common_Content/images/image_left.png" alt="Product Site" /></a></p><ul class="docnav top">' + nav +
        '</ul><div xml:lang="en-US" class="section" id="sect-Tidepool-Using" lang="en-US"><div class="titlepage"><div>'
        '<div><h2 class="title" id="sect-Tidepool-Using">6.1. Using tidepool</h2></div></div></div>' + "".join(secs) +
        '</div><ul class="docnav">' + nav + "</ul></body></html>\n")


def handwritten(work: Path, out: Path) -> None:
    from html import escape

    page = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>Tidepool manual</title></head><body>",
            "<nav><a href='/'>Home</a> | <a href='/download'>Download</a> | <a href='/faq'>FAQ</a></nav>",
            "<h1>Tidepool manual</h1>"]
    for h, paras in CONTENT:
        page += [f"<h2 id='{h.split()[0].lower()}'>{escape(h)}</h2>"] + [f"<p>{escape(p)}</p>" for p in paras]
    page += ["<footer><p>© 2026 Tidepool authors. <a href='/privacy'>Privacy</a></p></footer></body></html>"]
    (out / "handwritten.html").write_text("\n".join(page) + "\n")


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        only = set(sys.argv[2:])  # names of the makers to run (default: all)
        for make in (sphinx, mkdocs, pandoc, texinfo, doxygen, javadoc, docbook, manpage, publican, handwritten):
            if only and make.__name__ not in only:
                continue
            w = Path(d) / make.__name__
            w.mkdir()
            make(w, out)
            print("wrote", make.__name__)


if __name__ == "__main__":
    main()
