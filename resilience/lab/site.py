"""The lab's government portal, generated deterministically (same bytes on every run).

:func:`site_files` returns ``{relative path: bytes}``; :func:`write_site` lays it out under a
folder (removing anything else there), which is how `lab up` seeds web1 and web2 and how
`lab fault untamper` puts a defaced host back. Images are real PNGs and attachments real
PDFs, small enough that the whole site stays well under a megabyte.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import zlib
from functools import lru_cache
from html import escape
from pathlib import Path

SITE_TITLE = "岚溪市人民政府门户网站 | Lanxi Municipal Government Portal"
ARTICLE_COUNT = 72
FIXED_MTIME = 1717200000  # 2024-06-01: stable mtimes keep the tree identical across runs

CATEGORIES = [
    ("affairs", "政务公开", "Government Affairs"),
    ("notices", "通知公告", "Notices"),
    ("policy", "政策解读", "Policy Interpretation"),
    ("services", "便民服务", "Public Services"),
    ("investment", "招商引资", "Investment"),
    ("emergency", "应急管理", "Emergency Management"),
]
TOPICS_ZH = ["城市更新", "防汛抗旱", "营商环境", "社会保障", "教育发展", "医疗服务", "交通建设",
             "生态保护", "数字政府", "乡村振兴", "安全生产", "文化旅游"]
TOPICS_EN = ["urban renewal", "flood control", "business environment", "social security",
             "education", "health services", "transport", "ecology", "digital government",
             "rural revitalisation", "work safety", "culture and tourism"]
SENTENCES_ZH = [
    "市政府常务会议研究部署了下一阶段的重点工作。",
    "各部门要切实履行职责，确保各项措施落到实处。",
    "本次活动共接待群众咨询一千二百余人次。",
    "相关办理事项已全部纳入一网通办平台。",
    "请广大市民关注官方发布的权威信息。",
    "项目总投资约三点五亿元，预计明年底竣工。",
    "全市上下要坚持问题导向，持续优化服务流程。",
    "如有疑问，请拨打政务服务热线一二三四五。",
]
SENTENCES_EN = [
    "The municipal executive meeting reviewed progress on the annual work plan.",
    "Residents can now complete the application online through the one-stop portal.",
    "The new measures take effect on the first day of next month.",
    "Departments are asked to publish their service commitments before the deadline.",
    "Public comments on the draft regulation are welcome until the end of the month.",
    "The hotline 12345 remains available around the clock for enquiries.",
    "Investment in the project is estimated at 350 million yuan.",
    "An emergency drill will be held in the riverside district next week.",
]

CSS = """body{font-family:"Noto Sans SC","Microsoft YaHei",Arial,sans-serif;margin:0;color:#222}
header{background:#b71c1c;color:#fff;padding:12px 24px}header img{vertical-align:middle}
nav a{color:#fff;margin-right:16px;text-decoration:none}
main{max-width:960px;margin:0 auto;padding:16px}
.news li{margin:6px 0}.date{color:#888;font-size:90%}
article p{line-height:1.8}footer{border-top:1px solid #ddd;padding:12px;color:#666;font-size:85%}
"""
JS = "document.addEventListener('DOMContentLoaded',function(){var y=document.getElementById('year');if(y){y.textContent='2024';}});\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int, height: int, seed: int) -> bytes:
    """A valid RGB PNG with a deterministic pattern."""
    rnd = random.Random(seed)
    base = [rnd.randrange(40, 220) for _ in range(3)]
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            row += bytes(((base[0] + x * 3) % 256, (base[1] + y * 5) % 256,
                          (base[2] + (x ^ y)) % 256))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + _chunk(b"IEND", b""))


def make_pdf(title: str, lines: list[str]) -> bytes:
    """A valid one-page PDF (ASCII text, Helvetica) with a correct xref table."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text = ["BT", "/F1 16 Tf", "72 760 Td", f"({esc(title)}) Tj", "/F1 11 Tf"]
    for ln in lines:
        text += ["0 -20 Td", f"({esc(ln)}) Tj"]
    text.append("ET")
    stream = "\n".join(text).encode("ascii")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _page(title: str, body: str, depth: int) -> bytes:
    up = "../" * depth
    nav = "".join(f'<a href="{up}index.html#{slug}">{zh}</a>' for slug, zh, _ in CATEGORIES)
    html = f"""<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<link rel="stylesheet" href="{up}css/site.css">
<script src="{up}js/site.js"></script>
</head>
<body>
<header><img src="{up}images/logo.png" alt="logo" width="48" height="48">
<strong>岚溪市人民政府 Lanxi Municipal Government</strong>
<nav>{nav}<a href="{up}about.html">关于 About</a><a href="{up}contact.html">联系 Contact</a></nav>
</header>
<main>
{body}
</main>
<footer>岚溪市人民政府办公室主办 · Hosted by the General Office of Lanxi Municipal Government ·
<span id="year">2024</span> · 政务服务热线 12345</footer>
</body>
</html>
"""
    return html.encode("utf-8")


@lru_cache(maxsize=1)
def _articles() -> list[dict]:
    rnd = random.Random(20240601)
    out = []
    for i in range(1, ARTICLE_COUNT + 1):
        slug, cat_zh, cat_en = CATEGORIES[(i - 1) % len(CATEGORIES)]
        t = rnd.randrange(len(TOPICS_ZH))
        month, day = 1 + (i * 7) % 12, 1 + (i * 11) % 28
        paras = []
        for _ in range(rnd.randrange(3, 7)):
            zh = "".join(rnd.choice(SENTENCES_ZH) for _ in range(rnd.randrange(2, 4)))
            en = " ".join(rnd.choice(SENTENCES_EN) for _ in range(rnd.randrange(1, 3)))
            paras.append(f"{zh} {en}")
        out.append({
            "n": i, "category": slug, "category_zh": cat_zh, "category_en": cat_en,
            "date": f"2024-{month:02d}-{day:02d}",
            "title_zh": f"关于{TOPICS_ZH[t]}工作的通报（第{i}号）",
            "title_en": f"Bulletin No. {i} on {TOPICS_EN[t]}",
            "paras": paras,
            "image": i % 3 == 0,
            "attachment": i % 4 == 0,
            "path": f"news/2024/article-{i:03d}.html",
        })
    return out


@lru_cache(maxsize=1)
def _site_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    arts = _articles()
    for a in arts:
        body = [f"<article><h1>{escape(a['title_zh'])}<br><small>{escape(a['title_en'])}</small></h1>",
                f'<p class="date">{a["date"]} · {a["category_zh"]} {a["category_en"]}</p>']
        if a["image"]:
            img = f"images/news/{a['n']:03d}.png"
            files[img] = make_png(64, 40, a["n"])
            body.append(f'<p><img src="../../{img}" alt="{escape(a["title_en"])}" width="320"></p>')
        body += [f"<p>{escape(p)}</p>" for p in a["paras"]]
        if a["attachment"]:
            pdf = f"attachments/notice-{a['n']:03d}.pdf"
            files[pdf] = make_pdf(f"Lanxi Municipal Government Notice No. {a['n']}",
                                  [a["title_en"], f"Issued {a['date']}",
                                   "This attachment is part of the official notice."])
            body.append(f'<p>附件 Attachment: <a href="../../{pdf}">notice-{a["n"]:03d}.pdf</a></p>')
        body.append('<p><a href="../../index.html">返回首页 Back to home</a></p></article>')
        files[a["path"]] = _page(f"{a['title_zh']} - {SITE_TITLE}", "\n".join(body), 2)

    sections = []
    for slug, zh, en in CATEGORIES:
        items = "".join(
            f'<li><a href="{a["path"]}">{escape(a["title_zh"])} {escape(a["title_en"])}</a> '
            f'<span class="date">{a["date"]}</span></li>\n'
            for a in arts if a["category"] == slug)
        sections.append(f'<section id="{slug}"><h2>{zh} {en}</h2><ul class="news">\n{items}</ul></section>')
    home = ('<p><img src="images/banner.png" alt="banner" width="960"></p>\n'
            "<p>欢迎访问岚溪市人民政府门户网站。Welcome to the official portal of Lanxi.</p>\n"
            + "\n".join(sections))
    files["index.html"] = _page(SITE_TITLE, home, 0)
    files["about.html"] = _page(f"关于我们 About - {SITE_TITLE}",
                                "<h1>关于岚溪 About Lanxi</h1><p>岚溪市位于江南水乡。"
                                "Lanxi is a riverside city of 1.2 million residents.</p>", 0)
    files["contact.html"] = _page(f"联系我们 Contact - {SITE_TITLE}",
                                  "<h1>联系我们 Contact</h1><p>地址：岚溪市人民路1号 · "
                                  "Address: 1 Renmin Road, Lanxi · 电话 Tel: 12345</p>", 0)
    files["css/site.css"] = CSS.encode()
    files["js/site.js"] = JS.encode()
    files["images/logo.png"] = make_png(48, 48, 1)
    files["images/banner.png"] = make_png(240, 60, 2)
    files["robots.txt"] = b"User-agent: *\nDisallow: /uploads/\n"
    files["uploads/README.txt"] = "用户上传目录 Uploaded files (reviewed daily).\n".encode()
    files["uploads/2024/form-application.pdf"] = make_pdf("Application form", ["Name:", "ID:"])
    files["cache/home.fragment.html"] = b"<!-- cached fragment, safe to delete -->\n"
    files["cache/news-index.json"] = b'{"generated": "2024-06-01", "count": %d}\n' % len(arts)
    return files


def site_files() -> dict[str, bytes]:
    """The whole portal: ``{relative path: content}`` (a fresh copy of the dict)."""
    return dict(_site_files())


def article_paths() -> list[str]:
    """Relative paths of the article pages, in order."""
    return [a["path"] for a in _articles()]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest() -> dict[str, str]:
    """``{relative path: sha256}`` of the pristine site."""
    return {p: digest(b) for p, b in _site_files().items()}


def index_sha256() -> str:
    """sha256 of the pristine home page (what the lab config's check expects)."""
    return digest(_site_files()["index.html"])


def write_site(root: Path) -> dict[str, str]:
    """Make ``root`` hold exactly the pristine site: write what differs, delete what is extra.

    Returns the manifest. Files are mode 0644, folders 0755, mtimes fixed.
    """
    files = _site_files()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    wanted_dirs = {root}
    for rel, data in files.items():
        path = root / rel
        parent = path.parent
        while parent != root and parent not in wanted_dirs:
            wanted_dirs.add(parent)
            parent = parent.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.is_symlink():
            path.unlink()
        try:
            same = path.read_bytes() == data
        except OSError:
            same = False
        if not same:
            tmp = path.with_name(path.name + ".rsl-tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        os.chmod(path, 0o644)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        d = Path(dirpath)
        for fn in filenames:
            rel = str((d / fn).relative_to(root))
            if rel not in files:
                (d / fn).unlink()
        for dn in dirnames:
            sub = d / dn
            if sub.is_symlink():
                sub.unlink()
            elif sub not in wanted_dirs:
                shutil.rmtree(sub, ignore_errors=True)
    for d in wanted_dirs:
        os.chmod(d, 0o755)
        os.utime(d, (FIXED_MTIME, FIXED_MTIME))
    return manifest()


def is_pristine(root: Path) -> bool:
    """True when ``root`` holds exactly the pristine site (same paths, same bytes)."""
    files = _site_files()
    seen = set()
    for dirpath, _dirs, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = str(p.relative_to(root))
            if rel not in files:
                return False
            try:
                if p.read_bytes() != files[rel]:
                    return False
            except OSError:
                return False
            seen.add(rel)
    return seen == set(files)
