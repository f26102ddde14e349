# json.awk: flatten one JSON document into shell assignments that `eval` can read safely.
#
# busybox has no JSON parser and the init must read OCI config.json/runtime.json, so this turns
#   {"process": {"args": ["sh", "-c", "echo 'hi'"]}, "root": {"path": "rootfs"}}
# into (with -v prefix=C)
#   C_process_args__len=3
#   C_process_args_0='sh'
#   C_process_args_1='-c'
#   C_process_args_2='echo '\''hi'\'''
#   C_process__keys='args'
#   C_root_path='rootfs'
#   C__keys='process root'
#
# Names: prefix, then each object key or array index, joined by "_"; every byte outside [A-Za-z0-9_] in a key
# becomes "_". Arrays also get NAME__len (element count); objects get NAME__keys (their original keys,
# space-separated, single-quoted). Values are always single-quoted: strings decoded (\n, \t, \uXXXX with
# surrogate pairs → UTF-8; NUL dropped), numbers verbatim, true/false as words, null as ''.
# Invalid JSON: a message on stderr and exit status 1, with nothing printed for the caller to eval.
#
# Usage: awk -v prefix=C -f json.awk config.json        (prefix defaults to J)

BEGIN {
    if (prefix == "") prefix = "J"
    HEX = "0123456789abcdef"
    failed = 0
}

{ text = text $0 "\n" }

END {
    if (failed) exit 1
    ntok = tokenize(text)
    if (ntok < 0) { fail("unexpected character near: " substr(rest, 1, 20)); exit 1 }
    if (ntok == 0) { fail("empty document"); exit 1 }
    pos = 1
    nout = 0
    if (!value(prefix)) exit 1
    if (pos <= ntok) { fail("trailing data after the JSON value: " tok[pos]); exit 1 }
    for (i = 1; i <= nout; i++) print out[i]
}

function fail(msg) {
    if (!failed) print "json.awk: " msg > "/dev/stderr"
    failed = 1
    return 0
}

# Split the document into tok[1..n]; returns n, or -1 (with `rest` set) on a character that starts no token.
function tokenize(s,    n, c) {
    n = 0
    while (1) {
        sub(/^[ \t\r\n]+/, "", s)
        if (s == "") return n
        c = substr(s, 1, 1)
        if (c == "\"") {
            if (!match(s, /^"([^"\\]|\\.)*"/)) { rest = s; return -1 }
        } else if (index("{}[],:", c)) {
            RSTART = 1; RLENGTH = 1
        } else if (!match(s, /^(-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false|null)/)) {
            rest = s; return -1
        }
        tok[++n] = substr(s, 1, RLENGTH)
        s = substr(s, RLENGTH + 1)
    }
}

function emit(name, v) { out[++nout] = name "=" quote(v) }

function quote(v,    r, i) {
    r = ""
    while ((i = index(v, "'")) > 0) {
        r = r substr(v, 1, i - 1) "'\\''"
        v = substr(v, i + 1)
    }
    return "'" r v "'"
}

function safe_key(k,    r, c, i) {
    r = ""
    for (i = 1; i <= length(k); i++) {
        c = substr(k, i, 1)
        r = r (c ~ /[A-Za-z0-9_]/ ? c : "_")
    }
    return r
}

# Parse the value at tok[pos] and emit its assignments under `name`. Returns 1, or 0 after fail().
function value(name,    t) {
    if (pos > ntok) return fail("unexpected end of document")
    t = tok[pos]
    if (t == "{") return object(name)
    if (t == "[") return array(name)
    if (t ~ /^"/) { pos++; emit(name, unstring(t)); return !failed }
    if (t == "true" || t == "false") { pos++; emit(name, t); return 1 }
    if (t == "null") { pos++; emit(name, ""); return 1 }
    if (t ~ /^-?[0-9]/) { pos++; emit(name, t); return 1 }
    return fail("unexpected token " t)
}

function object(name,    keys, k, sep) {
    pos++
    keys = ""; sep = ""
    if (tok[pos] == "}") { pos++; emit(name "__keys", ""); return 1 }
    while (1) {
        if (tok[pos] !~ /^"/) return fail("expected an object key, got " tok[pos])
        k = unstring(tok[pos]); pos++
        if (tok[pos] != ":") return fail("expected ':' after key " k)
        pos++
        if (!value(name "_" safe_key(k))) return 0
        keys = keys sep k; sep = " "
        if (tok[pos] == ",") { pos++; continue }
        if (tok[pos] == "}") { pos++; break }
        return fail("expected ',' or '}' in object, got " tok[pos])
    }
    emit(name "__keys", keys)
    return 1
}

function array(name,    n) {
    pos++
    n = 0
    if (tok[pos] == "]") { pos++; emit(name "__len", 0); return 1 }
    while (1) {
        if (!value(name "_" n)) return 0
        n++
        if (tok[pos] == ",") { pos++; continue }
        if (tok[pos] == "]") { pos++; break }
        return fail("expected ',' or ']' in array, got " tok[pos])
    }
    emit(name "__len", n)
    return 1
}

function hexval(h,    v, i, d) {
    v = 0
    h = tolower(h)
    for (i = 1; i <= length(h); i++) {
        d = index(HEX, substr(h, i, 1))
        if (!d) return -1
        v = v * 16 + d - 1
    }
    return v
}

function utf8(cp) {
    if (cp == 0) return ""
    if (cp < 128) return sprintf("%c", cp)
    if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
    if (cp < 65536) return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
    return sprintf("%c%c%c%c", 240 + int(cp / 262144), 128 + int(cp / 4096) % 64, 128 + int(cp / 64) % 64, 128 + cp % 64)
}

# Decode a JSON string token (with its quotes).
function unstring(t,    s, r, i, c, cp, lo) {
    s = substr(t, 2, length(t) - 2)
    r = ""
    while ((i = index(s, "\\")) > 0) {
        r = r substr(s, 1, i - 1)
        c = substr(s, i + 1, 1)
        s = substr(s, i + 2)
        if (c == "n") r = r "\n"
        else if (c == "t") r = r "\t"
        else if (c == "r") r = r "\r"
        else if (c == "b") r = r "\b"
        else if (c == "f") r = r "\f"
        else if (c == "/" || c == "\\" || c == "\"") r = r c
        else if (c == "u") {
            cp = hexval(substr(s, 1, 4))
            if (cp < 0 || length(s) < 4) { fail("bad \\u escape in " t); return "" }
            s = substr(s, 5)
            if (cp >= 55296 && cp < 56320 && substr(s, 1, 2) == "\\u") {
                lo = hexval(substr(s, 3, 4))
                if (lo >= 56320 && lo < 57344) {
                    cp = 65536 + (cp - 55296) * 1024 + (lo - 56320)
                    s = substr(s, 7)
                }
            }
            if (cp >= 55296 && cp < 57344) cp = 65533   # a lone surrogate: U+FFFD
            r = r utf8(cp)
        } else { fail("bad escape \\" c " in " t); return "" }
    }
    return r s
}
