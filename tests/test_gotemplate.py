"""The Go template engine: Go's own outputs and errors, features one by one, and fuzzing.

GO_OUTPUTS, GO_EXEC_ERRORS and GO_PARSE_ERRORS were produced by running each template through
Go's text/template (with Ollama's `json` function) on DATA, as JSON decodes it in Go (numbers
are float64). Go 1.22 and later name the types in "incompatible types for comparison".
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.templates.gotemplate import (
    NilSlice,
    Template,
    TemplateError,
    TemplateExecError,
    TemplateSyntaxError,
    format_value,
    marshal_json,
    sprintf,
)


def _json(v: Any) -> str:
    try:
        return marshal_json(v)
    except ValueError:
        return ""


DATA: dict[str, Any] = {
    "s": "héllo <&>",
    "i": 3.0,
    "f": 1.5,
    "z": 0.0,
    "n": None,
    "b": True,
    "l": [1.0, "a", None, 2.5, [1.0, 2.0], {"k": "v"}],
    "e": [],
    "m": {"b": 2.0, "a": 1.0, "c": {"x": [1.0]}},
    "fl": [0.1, 100000.0, 1000000.0, 123456789.0, 1e-05, 0.0001, -0.0, 3.0, 1e20, 1e21],
}


def render(src: str, data: Any = None, **kw: Any) -> str:
    return Template(src, **kw).execute(data)


# (template, missingkey=zero?, output) rendered by Go's text/template with DATA
GO_OUTPUTS = [
    (
        "{{ .s }}|{{ .i }}|{{ .f }}|{{ .z }}|{{ .n }}|{{ .b }}|{{ .l }}|{{ .e }}|{{ .m }}",
        True,
        "héllo <&>|3|1.5|0|<no value>|true|[1 a <nil> 2.5 [1 2] map[k:v]]|[]|map[a:1 b:2 c:map[x:[1]]]",
    ),
    (
        "{{ range .fl }}{{ . }} {{ end }}",
        True,
        "0.1 100000 1e+06 1.23456789e+08 1e-05 0.0001 -0 3 1e+20 1e+21 ",
    ),
    (
        "{{ range .fl }}{{ json . }} {{ end }}",
        True,
        "0.1 100000 1000000 123456789 0.00001 0.0001 -0 3 100000000000000000000 1e+21 ",
    ),
    (
        '{{ .missing }}|{{ print .missing }}|{{ printf "%v" .missing }}|{{ html .missing }}',
        True,
        "<no value>|<nil>|<nil>|&lt;no value&gt;",
    ),
    (
        "{{ with .missing }}x{{ else }}y{{ end }}{{ if .n }}1{{ else }}2{{ end }}{{ range .missing }}r{{ else }}none{{ end }}",
        True,
        "y2none",
    ),
    (
        '{{ eq .missing "x" }}|{{ eq .n nil }}|{{ eq .s .s }}|{{ eq .i 3.0 }}|{{ eq .s "a" "héllo <&>" }}',
        True,
        "false|true|true|true|true",
    ),
    (
        "{{ and .s .i }}|{{ and .z .s }}|{{ or .z .e .s }}|{{ or .z .e }}|{{ not .e }}|{{ and .missing 1 }}",
        True,
        "3|0|héllo <&>|[]|true|<no value>",
    ),
    (
        '{{ index .l 1 }}|{{ index .l 5 "k" }}|{{ index .m "c" "x" 0 }}|{{ index .m "zz" }}|{{ index .s 1 }}',
        True,
        "a|v|1|<no value>|195",
    ),
    (
        "{{ slice .l 1 3 }}|{{ slice .s 1 3 }}|{{ slice .l }}|{{ slice .l 2 }}",
        True,
        "[a <nil>]|é|[1 a <nil> 2.5 [1 2] map[k:v]]|[<nil> 2.5 [1 2] map[k:v]]",
    ),
    ("{{ len .s }}|{{ len .l }}|{{ len .m }}|{{ len .e }}", True, "10|6|3|0"),
    (
        '{{ printf "%d|%5d|%-5d|%05d|%+d|%x|%X|%o|%b|%c|%q|%U|%#x|%#o" 42 42 42 42 42 255 255 8 5 65 65 65 255 8 }}',
        True,
        "42|   42|42   |00042|+42|ff|FF|10|101|A|'A'|U+0041|0xff|010",
    ),
    (
        '{{ printf "%s|%q|%v|%10s|%-10s|%.2s|%x|% x|%X" .s .s .s "ab" "ab" .s "hi" "hi" "hi" }}',
        True,
        'héllo <&>|"héllo <&>"|héllo <&>|        ab|ab        |hé|6869|68 69|6869',
    ),
    (
        '{{ printf "%t|%v|%s|%d" .b .b .b .b }}|{{ printf "%d %d" 1 }}|{{ printf "%d" 1 2 3 }}|{{ printf "%" }}',
        True,
        "true|true|%!s(bool=true)|%!d(bool=true)|1 %!d(MISSING)|1%!(EXTRA int=2, int=3)|%!(NOVERB)",
    ),
    (
        '{{ printf "%v|%s|%d" .l .l .l }}',
        True,
        "[1 a <nil> 2.5 [1 2] map[k:v]]|[%!s(float64=1) a <nil> %!s(float64=2.5) [%!s(float64=1) %!s(float64=2)] map[k:v]]|[%!d(float64=1) %!d(string=a) <nil> %!d(float64=2.5) [%!d(float64=1) %!d(float64=2)] map[%!d(string=k):%!d(string=v)]]",
    ),
    (
        '{{ printf "%v|%+v|%#v" .m .m .i }}|{{ printf "%T %T %T %T %T %T" .s .i .f .l .m .n }}',
        True,
        "map[a:1 b:2 c:map[x:[1]]]|map[a:1 b:2 c:map[x:[1]]]|3|string float64 float64 []interface {} map[string]interface {} <nil>",
    ),
    (
        '{{ printf "%[2]d %[1]d" 1 2 }}|{{ printf "%[3]d" 1 2 }}|{{ printf "%*d|%-*d|%.*f" 5 1 4 2 2 3.14159 }}',
        True,
        "2 1|%!d(BADINDEX)|    1|2   |3.14",
    ),
    (
        '{{ printf "%6.2f|%-8.3e|%08.3f|%+.1f|% d|%x" 3.14159 1234.5678 -3.14159 2.0 5 -255 }}',
        True,
        "  3.14|1.235e+03|-003.142|+2.0| 5|-ff",
    ),
    ('{{ printf "%5.2f|%-3s|" "a" 0 }}', True, "%!f(string=    a)|%!s(int=0  )|"),
    (
        '{{ print 1 2 }}|{{ print "a" "b" }}|{{ print 1 "a" 2 }}|{{ print .l .m }}|{{ print }}|{{ println 1 "a" .n }}',
        True,
        "1 2|ab|1a2|[1 a <nil> 2.5 [1 2] map[k:v]] map[a:1 b:2 c:map[x:[1]]]||1 a <nil>\n",
    ),
    (
        '{{ html "<a href=\'x\'>&\\"" }}|{{ js "a\'b\\"c<d>e&f=g\\u00e9\\n" }}|{{ urlquery "a b&c=d/é~_.-" }}|{{ html 1 2 }}',
        True,
        "&lt;a href=&#39;x&#39;&gt;&amp;&#34;|a\\'b\\\"c\\u003Cd\\u003Ee\\u0026f\\u003Dgé\\u000A|a+b%26c%3Dd%2F%C3%A9~_.-|1 2",
    ),
    (
        '{{ json .l }}|{{ json .m }}|{{ json .s }}|{{ json .n }}|{{ json "\\u2028<>&\\u0001\\u007f\\t" }}',
        True,
        '[1,"a",null,2.5,[1,2],{"k":"v"}]|{"a":1,"b":2,"c":{"x":[1]}}|"héllo \\u003c\\u0026\\u003e"|null|"\\u2028\\u003c\\u003e\\u0026\\u0001\x7f\\t"',
    ),
    (
        "{{ range $i, $e := .l }}{{ $i }}:{{ $e }} {{ end }}|{{ range $k, $v := .m }}{{ $k }}={{ $v }} {{ end }}|{{ range .e }}x{{ else }}empty{{ end }}",
        True,
        "0:1 1:a 2:<no value> 3:2.5 4:[1 2] 5:map[k:v] |a=1 b=2 c=map[x:[1]] |empty",
    ),
    (
        "{{ range $i, $e := .l }}{{ if eq $i 2 }}{{ break }}{{ end }}{{ $e }}{{ end }}|{{ range .l }}{{ if not . }}{{ continue }}{{ end }}[{{ . }}]{{ end }}",
        True,
        "1a|[1][a][2.5][[1 2]][map[k:v]]",
    ),
    (
        "{{ $x := 1 }}{{ range .l }}{{ $x = . }}{{ end }}{{ $x }}|{{ $x := 1 }}{{ with .s }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}",
        True,
        "map[k:v]|21",
    ),
    (
        "{{ with $x := .s }}{{ $x }}{{ . }}{{ end }}|{{ if $x := .i }}{{ $x }}{{ else }}{{ $x }}{{ end }}",
        True,
        "héllo <&>héllo <&>|3",
    ),
    (
        '{{ define "t" }}[{{ . }}]{{ end }}{{ template "t" .s }}{{ template "t" }}{{ block "b" .i }}<{{ . }}>{{ end }}',
        True,
        "[héllo <&>][<no value>]<3>",
    ),
    (
        '{{ define "r" }}{{ if . }}{{ len . }}{{ template "r" slice . 1 }}{{ end }}{{ end }}{{ template "r" .l }}',
        True,
        "654321",
    ),
    (
        "{{ (index .l 5).k }}|{{ $.m.c.x }}|{{ ($).s }}|{{ $x := .m }}{{ $x.c.x }}",
        True,
        "v|[1]|héllo <&>|[1]",
    ),
    (
        '{{- "a" -}}   \n  {{- "b" }}  {{ "c" -}}  d|  {{- /* c */ -}}  x {{/* y */}}',
        True,
        "ab  cd|x ",
    ),
    (
        "{{ 1 }}|{{ 1.5 }}|{{ 0x10 }}|{{ 0o17 }}|{{ 0b101 }}|{{ 1_000 }}|{{ 'a' }}|{{ '\\n' }}|{{ 1e3 }}|{{ -5 }}|{{ 017 }}|{{ 0x1p4 }}|{{ 1i }}",
        True,
        "1|1.5|16|15|5|1000|97|10|1000|-5|15|16|(0+1i)",
    ),
    ('{{ "\\x41\\101\\u00e9\\U0001F600" }}|{{ `raw\\n\\t` }}', True, "AAé😀|raw\\n\\t"),
    (
        '{{ .s | printf "%s!" }}|{{ .i | printf "%v %v" 7 }}|{{ "x" | len }}',
        True,
        "héllo <&>!|7 3|1",
    ),
    (
        "{{ .s }}|{{ .i }}|{{ .f }}|{{ .z }}|{{ .n }}|{{ .b }}|{{ .l }}|{{ .e }}|{{ .m }}",
        False,
        "héllo <&>|3|1.5|0|<no value>|true|[1 a <nil> 2.5 [1 2] map[k:v]]|[]|map[a:1 b:2 c:map[x:[1]]]",
    ),
    (
        "{{ range .fl }}{{ . }} {{ end }}",
        False,
        "0.1 100000 1e+06 1.23456789e+08 1e-05 0.0001 -0 3 1e+20 1e+21 ",
    ),
    (
        "{{ range .fl }}{{ json . }} {{ end }}",
        False,
        "0.1 100000 1000000 123456789 0.00001 0.0001 -0 3 100000000000000000000 1e+21 ",
    ),
    (
        '{{ .missing }}|{{ print .missing }}|{{ printf "%v" .missing }}|{{ html .missing }}',
        False,
        "<no value>|<nil>|<nil>|&lt;no value&gt;",
    ),
    (
        "{{ with .missing }}x{{ else }}y{{ end }}{{ if .n }}1{{ else }}2{{ end }}{{ range .missing }}r{{ else }}none{{ end }}",
        False,
        "y2none",
    ),
    (
        '{{ eq .missing "x" }}|{{ eq .n nil }}|{{ eq .s .s }}|{{ eq .i 3.0 }}|{{ eq .s "a" "héllo <&>" }}',
        False,
        "false|true|true|true|true",
    ),
]

# (template, Go's execution error) with DATA and missingkey=zero
GO_EXEC_ERRORS = [
    (
        "{{ .missing.x }}",
        'template: :1:11: executing "" at <.missing.x>: nil pointer evaluating interface {}.x',
    ),
    ("{{ .n.x }}", 'template: :1:5: executing "" at <.n.x>: nil pointer evaluating interface {}.x'),
    (
        "{{ .i.x }}",
        'template: :1:5: executing "" at <.i.x>: can\'t evaluate field x in type interface {}',
    ),
    (
        "{{ eq 1 1.5 }}",
        'template: :1:3: executing "" at <eq 1 1.5>: error calling eq: incompatible types for comparison: int and float64',
    ),
    (
        "{{ lt .l .m }}",
        'template: :1:3: executing "" at <lt .l .m>: error calling lt: invalid type for comparison',
    ),
    (
        "{{ index .l 9 }}",
        'template: :1:3: executing "" at <index .l 9>: error calling index: index out of range: 9',
    ),
    (
        "{{ index .m 1 }}",
        'template: :1:3: executing "" at <index .m 1>: error calling index: value has type int; should be string',
    ),
    (
        "{{ slice .l 3 1 }}",
        'template: :1:3: executing "" at <slice .l 3 1>: error calling slice: invalid slice index: 3 > 1',
    ),
    ("{{ len 3 }}", 'template: :1:3: executing "" at <len 3>: error calling len: len of type int'),
    (
        "{{ range .s }}x{{ end }}",
        'template: :1:9: executing "" at <.s>: range can\'t iterate over héllo <&>',
    ),
    ("{{ nil }}", 'template: :1:3: executing "" at <nil>: nil is not a command'),
    ("{{ .s 1 }}", 'template: :1:3: executing "" at <.s>: s is not a method but has arguments'),
    (
        '{{ template "nope" }}',
        'template: :1:12: executing "" at <{{template "nope"}}>: template "nope" not defined',
    ),
    (
        "{{ not 1 2 }}",
        'template: :1:3: executing "" at <not>: wrong number of args for not: want 1 got 2',
    ),
    (
        "{{ eq 1 }}",
        'template: :1:3: executing "" at <eq 1>: error calling eq: missing argument for comparison',
    ),
    ("{{ $x := 1 }}{{ $y = 2 }}", 'template: :1:21: executing "" at <2>: undefined variable: $y'),
    ("{{ printf 1 }}", 'template: :1:10: executing "" at <1>: expected string; found 1'),
]

# (template, Go's parse error)
GO_PARSE_ERRORS = [
    ("{{ .s }", 'template: :1: unexpected "}" in operand'),
    ("{{ if }}", "template: :1: missing value for if"),
    ("{{ end }}", "template: :1: unexpected {{end}}"),
    ("{{ else }}", "template: :1: unexpected {{else}}"),
    ("{{ if 1 }}", "template: :1: unexpected EOF"),
    ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "template: :1: expected end; found {{else}}"),
    ("{{ .a", "template: :1: unclosed action"),
    ("a\n{{ .a }", 'template: :2: unexpected "}" in operand'),
    ('{{ "a }}', "template: :1: unterminated quoted string"),
    ("{{ `a }}", "template: :1: unterminated raw quoted string"),
    ("{{ ( .a }}", "template: :1: unclosed left paren"),
    ("{{ .a ) }}", 'template: :1: unexpected ")" in command'),
    ("{{ foo }}", 'template: :1: function "foo" not defined'),
    ("{{ | .a }}", 'template: :1: unexpected "|" in command'),
    (
        '{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}',
        'template: :1: template: multiple definition of template "a"',
    ),
    ("{{ template .a }}", 'template: :1: unexpected ".a" in template clause'),
    ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
    ("{{ range .l }}{{ break 1 }}{{ end }}", 'template: :1: unexpected "1" in {{break}}'),
    ("{{ $x }}", 'template: :1: undefined variable "$x"'),
    ("{{ 1.a }}", 'template: :1: bad number syntax: "1.a"'),
    ('{{ "a".b }}', 'template: :1: unexpected . after term "\\"a\\""'),
    ("{{ $x, $y := 1 }}", "template: :1: too many declarations in command"),
    ("{{ range $x, $y, $z := .l }}{{ end }}", "template: :1: too many declarations in range"),
    ("{{ # }}", 'template: :1: unexpected "#" in command'),
    ("{{ \x01 }}", "template: :1: unrecognized character in action: U+0001"),
    ("{{/* a */ }}", "template: :1: comment ends before closing delimiter"),
    ("{{ /* a */}}", 'template: :1: unexpected "/" in command'),
    ("{{/* a", "template: :1: unclosed comment"),
    ("{{ 08 }}", 'template: :1: integer overflow: "08"'),
    ("{{ 'ab' }}", "template: :1: malformed character constant: 'ab'"),
    ('{{ "\\q" }}', "template: :1: invalid syntax"),
    ("{{ .a.b. }}", "template: :1: unexpected <.> in operand"),
    ("{{ 3x }}", 'template: :1: bad number syntax: "3x"'),
    ("{{ 1 | 2 }}", "template: :1: non executable command in pipeline stage 2"),
    ("{{ .a:=1 }}", 'template: :1: unexpected ":=" in operand'),
    ("a\n\nb{{ if .x }}\n{{ else }}\n{{ end }}{{ end }}", "template: :5: unexpected {{end}}"),
    ("{{ with $x := 1 }}{{ end }}{{ $x }}", 'template: :1: undefined variable "$x"'),
    ('{{ define "x" }}{{ else }}{{ end }}', "template: :1: unexpected {{else}} in define clause"),
    ("{{ range .x }}{{ else if .y }}{{ end }}", "template: :1: unexpected <if> in input"),
]


@pytest.mark.parametrize(("src", "zero", "want"), GO_OUTPUTS)
def test_matches_go_output(src: str, zero: bool, want: str) -> None:
    tmpl = Template(src, funcs={"json": _json}, missingkey="zero" if zero else "default")
    assert tmpl.execute(DATA) == want


@pytest.mark.parametrize(("src", "want"), GO_EXEC_ERRORS)
def test_matches_go_exec_error(src: str, want: str) -> None:
    tmpl = Template(src, funcs={"json": _json}, missingkey="zero")
    with pytest.raises(TemplateExecError) as exc:
        tmpl.execute(DATA)
    assert str(exc.value) == want


@pytest.mark.parametrize(("src", "want"), GO_PARSE_ERRORS)
def test_matches_go_parse_error(src: str, want: str) -> None:
    with pytest.raises(TemplateSyntaxError) as exc:
        Template(src, funcs={"json": _json})
    assert str(exc.value) == want


# -- features, one at a time ------------------------------------------------------------------


def test_trim_markers_trim_all_adjacent_whitespace() -> None:
    assert render("a \n\t {{- 1 -}} \n b") == "a1b"
    assert render("a  {{- 1 }}  b") == "a1  b"
    assert render("{{- /* note */ -}}\n  x") == "x"
    assert render("{{-3}}") == "-3"  # no space after the dash: a negative number


def test_comments_and_text() -> None:
    assert render("a{{/* one\ntwo */}}b") == "ab"
    assert render("no actions at all\n") == "no actions at all\n"


def test_if_else_if_else() -> None:
    src = '{{ if eq .r "a" }}A{{ else if eq .r "b" }}B{{ else }}other{{ end }}'
    assert [render(src, {"r": r}) for r in ("a", "b", "c")] == ["A", "B", "other"]


def test_truth_follows_go() -> None:
    falsy = [False, 0, 0.0, "", [], {}, None, NilSlice()]
    truthy = [True, 1, -1.5, "x", [0], {"a": 0}, Point(0, 0)]
    assert all(render("{{ if . }}t{{ else }}f{{ end }}", v) == "f" for v in falsy)
    assert all(render("{{ if . }}t{{ else }}f{{ end }}", v) == "t" for v in truthy)


def test_range_lists_maps_ints_and_else() -> None:
    assert render("{{ range . }}<{{ . }}>{{ end }}", ["a", "b"]) == "<a><b>"
    assert (
        render("{{ range $k, $v := . }}{{ $k }}={{ $v }} {{ end }}", {"b": 1, "a": 2}) == "a=2 b=1 "
    )
    assert render("{{ range $i, $e := . }}{{ $i }}{{ $e }}{{ end }}", ["x", "y"]) == "0x1y"
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"
    assert render("{{ range $i := 2 }}{{ $i }}{{ end }}") == "01"
    assert render("{{ range . }}x{{ else }}empty{{ end }}", []) == "empty"
    assert render("{{ range .missing }}x{{ else }}none{{ end }}", {}) == "none"
    assert render("{{ range 0 }}x{{ else }}zero{{ end }}") == "zero"


def test_break_and_continue() -> None:
    src = "{{ range . }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert render(src, [1, 2, 3, 4, 5]) == "13"
    # In an inner range's else branch, break ends only that range (as Go recovers it there).
    src = "{{ range .o }}<{{ range $.i }}x{{ else }}{{ break }}{{ end }}>{{ end }}"
    assert render(src, {"o": [1, 2], "i": []}) == "<><>"


def test_with_else_with() -> None:
    src = "{{ with .a }}a={{ . }}{{ else with .b }}b={{ . }}{{ else }}none{{ end }}"
    assert render(src, {"a": "x"}) == "a=x"
    assert render(src, {"a": "", "b": 7}) == "b=7"
    assert render(src, {}) == "none"


def test_define_template_block() -> None:
    src = '{{ define "item" }}[{{ . }}]{{ end }}{{ range . }}{{ template "item" . }}{{ end }}'
    assert render(src, [1, 2]) == "[1][2]"
    assert render('{{ block "b" . }}<{{ . }}>{{ end }}', "x") == "<x>"
    assert render('{{ define "t" }}{{ $ }}{{ end }}{{ template "t" }}') == "<no value>"
    with pytest.raises(TemplateExecError, match="exceeded maximum template depth"):
        render('{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}')


def test_variables_and_scoping() -> None:
    assert render("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}") == "2"
    assert render("{{ $x := 1 }}{{ with 5 }}{{ $x := . }}{{ $x }}{{ end }}{{ $x }}") == "51"
    assert render("{{ $ }}|{{ with .a }}{{ $.b }}{{ end }}", {"a": 1, "b": 2}) == "map[a:1 b:2]|2"
    assert render("{{ range $i, $e := . }}{{ end }}{{ $x := 3 }}{{ $x }}", [1]) == "3"
    with pytest.raises(TemplateSyntaxError, match='undefined variable "\\$x"'):
        render("{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}")


def test_and_or_short_circuit_and_return_the_deciding_value() -> None:
    calls: list[str] = []

    def boom() -> str:
        calls.append("boom")
        return "B"

    funcs = {"boom": boom}
    assert render("{{ and 0 boom }}", funcs=funcs) == "0"
    assert render('{{ or "x" boom }}', funcs=funcs) == "x"
    assert calls == []
    assert render("{{ and 1 boom }}", funcs=funcs) == "B"
    assert render('{{ or 0 "" "z" }}|{{ and 1 2 3 }}|{{ or 0 "" }}') == "z|3|"


def test_eq_multi_arg_and_comparisons() -> None:
    assert render('{{ eq .r "a" "b" "c" }}', {"r": "c"}) == "true"
    assert render('{{ eq .r "a" "b" }}', {"r": "c"}) == "false"
    assert (
        render("{{ lt 1 2 }}{{ le 2 2 }}{{ gt 3 2 }}{{ ge 1 2 }}{{ ne 1 2 }}")
        == "truetruetruefalsetrue"
    )
    assert (
        render('{{ lt "a" "b" }}{{ eq .missing "x" }}{{ eq .n nil }}', {"n": None})
        == "truefalsetrue"
    )


def test_mixed_int_and_float_comparisons_fail_as_in_go() -> None:
    with pytest.raises(
        TemplateExecError, match="incompatible types for comparison: int and float64"
    ):
        render("{{ eq 1 1.0 }}")
    with pytest.raises(
        TemplateExecError, match="incompatible types for comparison: float64 and int"
    ):
        render("{{ lt .x 2 }}", {"x": 1.5})
    assert render("{{ lt .x 2.0 }}", {"x": 1.5}) == "true"


def test_printf_verbs_widths_and_errors() -> None:
    assert render(
        '{{ printf "%s|%d|%v|%q|%t|%5.2f|%-4s|%04d|%x" "a" 3 1.5 "q" true 3.14159 "ab" 7 255 }}'
    ) == ('a|3|1.5|"q"|true| 3.14|ab  |0007|ff')
    assert render('{{ printf "%d %s" "x" }}') == "%!d(string=x) %!s(MISSING)"
    assert render('{{ printf "%d" 1 2 }}') == "1%!(EXTRA int=2)"
    assert render('{{ "a" | printf "%s-%s" "b" }}') == "b-a"


def test_index_slice_len() -> None:
    data = {"l": [1, 2, 3], "m": {"k": ["v"]}, "s": "héllo"}
    assert (
        render('{{ index .l 1 }}|{{ index .m "k" 0 }}|{{ index .m "zz" }}', data)
        == "2|v|<no value>"
    )
    assert render("{{ slice .l 1 }}|{{ slice .l 0 2 }}|{{ slice .s 0 1 }}", data) == "[2 3]|[1 2]|h"
    assert render("{{ len .l }}|{{ len .m }}|{{ len .s }}", data) == "3|1|6"  # len counts bytes
    with pytest.raises(TemplateExecError, match="index out of range: 5"):
        render("{{ index .l 5 }}", data)


def test_missing_keys_under_each_option() -> None:
    assert render("{{ .a }}", {}) == "<no value>"
    assert render("{{ .a.b }}", {}) == "<no value>"
    assert render("{{ .a }}", {}, missingkey="zero") == "<no value>"
    with pytest.raises(TemplateExecError, match=r"nil pointer evaluating interface \{\}\.b"):
        render("{{ .a.b }}", {}, missingkey="zero")
    with pytest.raises(TemplateExecError, match='map has no entry for key "a"'):
        render("{{ .a }}", {}, missingkey="error")
    assert render("{{ print .a }}", {}) == "<nil>"


def test_printing_values_as_go() -> None:
    assert format_value([1, "a", None, True]) == "[1 a <nil> true]"
    assert format_value({"b": 1.0, "a": [0.5]}) == "map[a:[0.5] b:1]"
    assert [format_value(f) for f in (1.0, 0.5, 1e6, 123456.0, 1e-5, 1e21)] == [
        "1",
        "0.5",
        "1e+06",
        "123456",
        "1e-05",
        "1e+21",
    ]
    assert format_value(b"hi") == "[104 105]"
    assert sprintf("%v|%+v", Point(1, 2), Point(1, 2)) == "{1 2}|{X:1 Y:2}"


def test_json_is_go_encoding() -> None:
    assert marshal_json({"b": 1.0, "a": "<&>", "c": [None, True, 1e21, 1e-7]}) == (
        '{"a":"\\u003c\\u0026\\u003e","b":1,"c":[null,true,1e+21,1e-7]}'
    )
    assert marshal_json(NilSlice()) == "null"
    with pytest.raises(ValueError):
        marshal_json(float("nan"))


def test_literals() -> None:
    src = r"""{{ "a\tb\u00e9\x41" }}|{{ `raw\n` }}|{{ 0x10 }}|{{ 1e3 }}|{{ 'a' }}|{{ 1_000 }}"""
    assert render(src) == ("a\tbéA|raw\\n|16|1000|97|1000")
    assert render("{{ true }}|{{ false }}|{{ 1.5 }}|{{ -2 }}") == "true|false|1.5|-2"


def test_html_js_urlquery() -> None:
    assert render("{{ html \"<a href='x'>&\" }}") == "&lt;a href=&#39;x&#39;&gt;&amp;"
    assert render('{{ js "a\'b<>" }}') == "a\\'b\\u003C\\u003E"
    assert render('{{ urlquery "a b&c" }}') == "a+b%26c"


def test_call_invokes_a_function_value() -> None:
    assert render("{{ call .f 2 3 }}", {"f": lambda a, b: a * b}) == "6"
    with pytest.raises(TemplateExecError, match="call of nil"):
        render("{{ call .f }}", {"f": None})


# -- Python data as Go data -------------------------------------------------------------------


@dataclass
class Point:
    X: int
    Y: int


@dataclass
class Person:
    Name: str
    secret: str = "s"
    Tags: list[str] = dataclasses.field(default_factory=list)

    def Greet(self, other: str) -> str:  # a Go method: exported, callable with arguments
        return f"hi {other}, I am {self.Name}"

    def String(self) -> str:  # fmt.Stringer
        return f"Person({self.Name})"


class ZeroMap(dict[str, Any]):
    def __go_zero__(self) -> str:
        return "zero!"


def test_structs_fields_methods_and_stringers() -> None:
    p = Person("Ann", Tags=["a"])
    assert render('{{ .Name }}|{{ .Tags }}|{{ .Greet "Bob" }}|{{ . }}', p) == (
        "Ann|[a]|hi Bob, I am Ann|Person(Ann)"
    )
    assert render('{{ "Cy" | .Greet }}', p) == "hi Cy, I am Ann"
    with pytest.raises(TemplateExecError, match="secret is an unexported field"):
        render("{{ .secret }}", p)
    with pytest.raises(TemplateExecError, match="can't evaluate field Age in type Person"):
        render("{{ .Age }}", p)
    with pytest.raises(TemplateExecError, match="wrong number of args for Greet"):
        render("{{ .Greet }}", p)


def test_mapping_types_and_zero_values() -> None:
    from types import MappingProxyType

    assert render("{{ .a }}", MappingProxyType({"a": 1})) == "1"
    assert render("{{ .nope }}", ZeroMap(), missingkey="zero") == "zero!"
    assert render('{{ index . "nope" }}', ZeroMap()) == "zero!"


def test_custom_functions() -> None:
    funcs = {"up": str.upper, "add": lambda a, b: a + b, "fail": lambda: 1 / 0}
    assert render('{{ up "x" }}|{{ add 1 2 }}|{{ "y" | up }}', funcs=funcs) == "X|3|Y"
    with pytest.raises(TemplateExecError, match="error calling fail: division by zero"):
        render("{{ fail }}", funcs=funcs)
    with pytest.raises(TemplateExecError, match="wrong number of args for add: want 2 got 1"):
        render("{{ add 1 }}", funcs=funcs)
    with pytest.raises(TemplateSyntaxError, match='function "nope" not defined'):
        Template("{{ nope }}")
    with pytest.raises(ValueError):
        Template("x", funcs={"bad-name": str})


def test_parse_is_cached_and_templates_are_reusable() -> None:
    a, b = Template("{{ .x }}!"), Template("{{ .x }}!")
    assert a.root is b.root
    assert [a.execute({"x": i}) for i in range(3)] == ["0!", "1!", "2!"]


@pytest.mark.parametrize(
    "src",
    [
        "{{ .x }",
        "{{ if .x }}",
        "{{ end }}",
        "{{ range }}{{ end }}",
        '{{ "x }}',
        "{{ 3x }}",
        "{{ $y }}",
    ],
)
def test_malformed_templates_raise_syntax_errors(src: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=r"^template: :\d+: "):
        Template(src)


# -- robustness -------------------------------------------------------------------------------

_PIECES = [
    "{{",
    "}}",
    "{{- ",
    " -}}",
    " ",
    "\n",
    ".a",
    ".b.c",
    "$",
    "$x",
    ":=",
    "=",
    "|",
    "(",
    ")",
    "if",
    "else",
    "end",
    "range",
    "with",
    'define "t"',
    'template "t"',
    'block "t"',
    "break",
    "continue",
    '"q"',
    "`r`",
    "1",
    "-2",
    "3.5",
    "'c'",
    "eq",
    "and",
    "or",
    "len",
    "index",
    "slice",
    'printf "%v"',
    "print",
    "not",
    "nil",
    "true",
    "txt",
    ",",
    "$i, $e :=",
    "/*",
    "*/",
    "{{/* c */}}",
    ".",
    "0x1F",
    "1e3",
    "call",
    "html",
]
_VALUES: list[Any] = [
    None,
    0,
    1,
    -1.5,
    "",
    "s",
    [],
    [1, "x"],
    {},
    {"a": {"b": [1]}},
    True,
    Point(1, 2),
    NilSlice(),
    b"xy",
    {"c": None},
    10**30,
    float("inf"),
    float("nan"),
]


def test_fuzzed_templates_and_data_raise_only_template_errors() -> None:
    rnd = random.Random(7)
    for _ in range(3000):
        src = "".join(
            rnd.choice(_PIECES) + rnd.choice(["", " "]) for _ in range(rnd.randint(1, 14))
        )
        data = {k: rnd.choice(_VALUES) for k in ("a", "b", "x")}
        try:
            tmpl = Template(src, missingkey=rnd.choice(["default", "zero", "error"]))
            tmpl.execute(rnd.choice([data, None, rnd.choice(_VALUES)]))
        except TemplateError:
            pass


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(TemplateSyntaxError):
        Template("{{ " + "(" * 500 + "1" + ")" * 500 + " }}")
    with pytest.raises(TemplateSyntaxError):
        Template("{{ if 1 }}" * 300 + "{{ end }}" * 300)


def test_foreign_exceptions_become_exec_errors() -> None:
    class Bad(Mapping[str, Any]):
        def __getitem__(self, k: str) -> Any:
            raise RuntimeError("broken mapping")

        def __iter__(self) -> Any:
            raise RuntimeError("broken iter")

        def __len__(self) -> int:
            return 1

    for src in ("{{ .a }}", "{{ range . }}{{ end }}", "{{ . }}", "{{ json . }}"):
        with pytest.raises(TemplateExecError):
            render(src, Bad(), funcs={"json": marshal_json})
