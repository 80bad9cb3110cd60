// A cheap scan of YAML text before Yams composes it (issue 17).
//
// Yams checks a mapping's keys for duplicates by hashing them, and an alias is expanded every
// time it is hashed: a 400-byte file whose key is an alias of lists of aliases of lists … costs
// ten times more CPU per level (depth 9: over 30 s), in `maps validate`, at start and on every
// SIGHUP. Nothing in a map or a config needs anchors or aliases, so they are refused before
// composing, together with caps on how many values and how deep a file may nest (a 16 MiB file
// of `[` would otherwise recurse 16 million levels deep in Yams and in the readers).
//
// The scan does not tokenize YAML; it is built to never miss an alias, at the price of refusing
// a few odd texts that YAML would read as plain words:
//
// - An alias (`*name`) or anchor (`&name`) can only start where a node starts: at the start of a
//   line (after indentation), or after `-`, `?`, `:`, `[`, `{` or `,` and blanks. Any `*` or `&`
//   there that is followed by a non-blank is refused, inside quotes too (`"- *x"` is refused,
//   `"see *x"` and `R&D` are not).
// - Comments are skipped only on lines with no quote character, where a `#` after a blank is
//   certainly a comment or text inside a string (in a string the rest of the line is text too).
// - Line breaks are LF, CR, NEL, LS and PS, as libyaml counts them.
// - Keys are plain words: the explicit key indicator `?` where a node starts, and a `]` or `}`
//   followed by `:` (a collection used as a key, unless it looks quoted: "[::1]:9102") are
//   refused. This one is best effort: without aliases a collection key costs Yams' duplicate
//   check time in proportion to its size, not exponential time.
// - Depth is estimated from indentation (each deeper indentation may hold a mapping and a list),
//   the `-`/`?`/`:` indicators on the line and the flow brackets open; the estimate may run high,
//   never low, except for brackets inside quoted text. The total number of flow collections is
//   capped as well, which bounds the depth however the brackets are quoted.

/// The limits a map or config file must stay within; checked before the file is composed.
public enum YAMLLimits {
    /// Values (scalars and collections, counted where they start) in one file.
    public static let maxNodes = 200_000
    /// Nesting depth, as estimated by the pre-scan.
    public static let maxDepth = 64
    /// Flow collections (`[…]`, `{…}`) in one file.
    public static let maxFlowCollections = 10_000
}

/// The first reason a text is refused before composing, at its 1-based line and column.
struct YAMLPreScanIssue: Equatable {
    var line: Int
    var column: Int
    var message: String
}

enum YAMLPreScan {
    static func check(_ yaml: String) -> YAMLPreScanIssue? {
        var text = yaml
        return text.withUTF8 { check(bytes: $0) }
    }

    // ASCII bytes the scan looks at.
    private static let space: UInt8 = 0x20, tab: UInt8 = 0x09, lf: UInt8 = 0x0A, cr: UInt8 = 0x0D
    private static let dquote: UInt8 = 0x22, squote: UInt8 = 0x27, hash: UInt8 = 0x23
    private static let star: UInt8 = 0x2A, amp: UInt8 = 0x26
    private static let dash: UInt8 = 0x2D, question: UInt8 = 0x3F, colon: UInt8 = 0x3A, comma: UInt8 = 0x2C
    private static let lbracket: UInt8 = 0x5B, rbracket: UInt8 = 0x5D, lbrace: UInt8 = 0x7B, rbrace: UInt8 = 0x7D

    /// The length of the line break at `i` (LF, CR, CR LF, NEL, LS, PS), or 0.
    private static func breakLength(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> Int {
        let n = b.count
        switch b[i] {
        case lf: return 1
        case cr: return i + 1 < n && b[i + 1] == lf ? 2 : 1
        case 0xC2: return i + 1 < n && b[i + 1] == 0x85 ? 2 : 0
        case 0xE2: return i + 2 < n && b[i + 1] == 0x80 && (b[i + 2] == 0xA8 || b[i + 2] == 0xA9) ? 3 : 0
        default: return 0
        }
    }

    /// The length of a blank at `i` (space, tab, byte order mark), or 0.
    private static func blankLength(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> Int {
        if b[i] == space || b[i] == tab { return 1 }
        if b[i] == 0xEF, i + 2 < b.count, b[i + 1] == 0xBB, b[i + 2] == 0xBF { return 3 }
        return 0
    }

    static func check(bytes b: UnsafeBufferPointer<UInt8>) -> YAMLPreScanIssue? {
        let n = b.count
        var i = 0
        var line = 1
        var indents: [Int] = []
        var flowOpen = 0, flowTotal = 0, nodes = 0
        while i < n {
            // One line: [start, end), then its break.
            let start = i
            var end = i
            var hasQuote = false
            while end < n, breakLength(b, end) == 0 {
                if b[end] == dquote || b[end] == squote { hasQuote = true }
                end += 1
            }
            var indent = 0
            while start + indent < end, b[start + indent] == space { indent += 1 }
            var first = start
            while first < end, blankLength(b, first) > 0 { first += blankLength(b, first) }
            let contentLine = first < end && !(b[first] == hash && !hasQuote)
            if contentLine {
                while let top = indents.last, top >= indent { indents.removeLast() }
                indents.append(indent)
            }
            var k = start
            var column = 1
            var previous: UInt8? = nil   // the last non-blank byte on this line; nil at line start
            var afterBlank = true
            var indicators = 0
            while contentLine, k < end {
                let blank = blankLength(b, k)
                if blank > 0 {
                    k += blank
                    column += 1
                    afterBlank = true
                    continue
                }
                let c = b[k]
                if c == hash, afterBlank, !hasQuote { break }   // a comment to the end of the line
                let nodeStart: Bool
                if let p = previous {
                    nodeStart = p == dash || p == question || p == colon || p == lbracket || p == lbrace || p == comma
                } else {
                    nodeStart = true
                }
                let nextIsBlank = k + 1 >= end || blankLength(b, k + 1) > 0
                if nodeStart {
                    nodes += 1
                    if nodes > YAMLLimits.maxNodes {
                        return YAMLPreScanIssue(line: line, column: column, message:
                            "more than \(YAMLLimits.maxNodes) values in one file (the limit keeps a hostile file from exhausting memory)")
                    }
                    if (c == star || c == amp) && !nextIsBlank {
                        let what = c == star ? "an alias (*name)" : "an anchor (&name)"
                        return YAMLPreScanIssue(line: line, column: column, message:
                            "\(what): anchors and aliases are not supported, write the value out "
                            + "(a word that starts with * or & after a blank, '-', ':', '?', ',', '[' or '{' reads as one, even in quotes)")
                    }
                    if c == question {
                        return YAMLPreScanIssue(line: line, column: column, message:
                            "explicit keys (? key) are not supported: a key is a plain word "
                            + "(a word that starts with ? after a blank, '-', ':', ',', '[' or '{' reads as one)")
                    }
                    if c == lbracket || c == lbrace {
                        flowOpen += 1
                        flowTotal += 1
                        if flowTotal > YAMLLimits.maxFlowCollections {
                            return YAMLPreScanIssue(line: line, column: column, message:
                                "more than \(YAMLLimits.maxFlowCollections) [ ] or { } collections in one file")
                        }
                    }
                    if (c == dash || c == question || c == colon) && nextIsBlank { indicators += 1 }
                    let depth = 2 * indents.count + indicators + flowOpen
                    if depth > YAMLLimits.maxDepth {
                        return YAMLPreScanIssue(line: line, column: column, message:
                            "nested more than \(YAMLLimits.maxDepth) levels deep")
                    }
                }
                if c == rbracket || c == rbrace {
                    if flowOpen > 0 { flowOpen -= 1 }
                    // `[a, b]: x` or `{a: 1}: x`: a collection used as a key, which Yams hashes
                    // whole on its duplicate check. Keys are plain words.
                    // Not when an odd number of quotes precede it on the line: most likely text
                    // in quotes such as "[::1]:9102" (without aliases, a collection key that
                    // slips through costs time in proportion to its size, not more).
                    var quotes = 0
                    for q in start..<k where b[q] == dquote || b[q] == squote { quotes += 1 }
                    var m = k + 1
                    while m < end, blankLength(b, m) > 0 { m += blankLength(b, m) }
                    if quotes % 2 == 0, m < end, b[m] == colon {
                        return YAMLPreScanIssue(line: line, column: column, message:
                            "a [ ] or { } collection used as a key: a key is a plain word")
                    }
                }
                previous = c
                afterBlank = false
                // Columns count characters: UTF-8 continuation bytes do not start one.
                k += 1
                while k < end, b[k] & 0xC0 == 0x80 { k += 1 }
                column += 1
            }
            i = end
            if i < n {
                i += breakLength(b, i)
                line += 1
            }
        }
        return nil
    }
}
