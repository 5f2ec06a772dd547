package dev.fraqat.deploy.core

/**
 * A small JSON reader and writer (RFC 8259), because the app may depend on nothing but the Kotlin standard library.
 *
 * Values are plain Kotlin objects: `null`, [Boolean], [Long] (numbers without fraction or exponent that fit),
 * [Double] (every other number), [String], [List] and [Map] (a [LinkedHashMap], so key order is kept).
 */
class JsonException(message: String) : Exception(message)

object Json {
    fun parse(text: String): Any? = Reader(text).document()

    /** [value] as JSON text; [indent] spaces per level, or a compact single line when [indent] is 0. */
    fun write(value: Any?, indent: Int = 2): String = StringBuilder().also { Writer(it, indent).value(value, 0) }.toString()

    /** Deep copy-free equality with JSON semantics: 1 and 1.0 are equal, object key order does not matter. */
    fun equal(a: Any?, b: Any?): Boolean = when {
        a is Number && b is Number -> if (a is Long && b is Long) a == b else a.toDouble() == b.toDouble()
        a is Map<*, *> && b is Map<*, *> -> a.size == b.size && a.all { (k, v) -> b.containsKey(k) && equal(v, b[k]) }
        a is List<*> && b is List<*> -> a.size == b.size && a.indices.all { equal(a[it], b[it]) }
        else -> a == b
    }

    private class Reader(private val s: String) {
        private var i = 0
        private var depth = 0

        fun document(): Any? {
            val v = value()
            space()
            if (i != s.length) fail("unexpected '${s[i]}' after the value")
            return v
        }

        private fun fail(what: String): Nothing {
            val line = s.substring(0, minOf(i, s.length)).count { it == '\n' } + 1
            throw JsonException("$what at line $line, offset $i")
        }

        private fun space() {
            while (i < s.length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++
        }

        private fun value(): Any? {
            space()
            if (i >= s.length) fail("unexpected end of input")
            return when (val c = s[i]) {
                '{' -> nested { obj() }
                '[' -> nested { array() }
                '"' -> string()
                't' -> word("true", true)
                'f' -> word("false", false)
                'n' -> word("null", null)
                else -> if (c == '-' || c in '0'..'9') number() else fail("unexpected '$c'")
            }
        }

        private inline fun <T> nested(block: () -> T): T {
            if (++depth > 512) fail("nesting deeper than 512")
            return block().also { depth-- }
        }

        private fun word(w: String, v: Any?): Any? {
            if (!s.startsWith(w, i)) fail("invalid literal")
            i += w.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            i++
            space()
            if (i < s.length && s[i] == '}') {
                i++
                return out
            }
            while (true) {
                space()
                if (i >= s.length || s[i] != '"') fail("expected a string key")
                val key = string()
                space()
                if (i >= s.length || s[i] != ':') fail("expected ':'")
                i++
                out[key] = value()
                space()
                if (i >= s.length) fail("unterminated object")
                when (s[i++]) {
                    ',' -> continue
                    '}' -> return out
                    else -> { i--; fail("expected ',' or '}'") }
                }
            }
        }

        private fun array(): List<Any?> {
            val out = ArrayList<Any?>()
            i++
            space()
            if (i < s.length && s[i] == ']') {
                i++
                return out
            }
            while (true) {
                out.add(value())
                space()
                if (i >= s.length) fail("unterminated array")
                when (s[i++]) {
                    ',' -> continue
                    ']' -> return out
                    else -> { i--; fail("expected ',' or ']'") }
                }
            }
        }

        private fun string(): String {
            i++ // opening quote
            val out = StringBuilder()
            while (true) {
                if (i >= s.length) fail("unterminated string")
                val c = s[i++]
                when {
                    c == '"' -> return out.toString()
                    c == '\\' -> {
                        if (i >= s.length) fail("unterminated escape")
                        when (val e = s[i++]) {
                            '"' -> out.append('"')
                            '\\' -> out.append('\\')
                            '/' -> out.append('/')
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000C')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) fail("short \\u escape")
                                val hex = s.substring(i, i + 4)
                                if (!hex.all { it in '0'..'9' || it in 'a'..'f' || it in 'A'..'F' }) fail("bad \\u escape")
                                out.append(hex.toInt(16).toChar())
                                i += 4
                            }
                            else -> { i--; fail("bad escape '\\$e'") }
                        }
                    }
                    c < ' ' -> { i--; fail("control character in a string") }
                    else -> out.append(c)
                }
            }
        }

        private fun number(): Any {
            val start = i
            if (s[i] == '-') i++
            if (i >= s.length) fail("bad number")
            if (s[i] == '0') {
                i++
            } else if (s[i] in '1'..'9') {
                while (i < s.length && s[i].isAsciiDigit()) i++
            } else {
                fail("bad number")
            }
            var integral = true
            if (i < s.length && s[i] == '.') {
                integral = false
                i++
                if (i >= s.length || !s[i].isAsciiDigit()) fail("bad fraction")
                while (i < s.length && s[i].isAsciiDigit()) i++
            }
            if (i < s.length && (s[i] == 'e' || s[i] == 'E')) {
                integral = false
                i++
                if (i < s.length && (s[i] == '+' || s[i] == '-')) i++
                if (i >= s.length || !s[i].isAsciiDigit()) fail("bad exponent")
                while (i < s.length && s[i].isAsciiDigit()) i++
            }
            val text = s.substring(start, i)
            if (integral) text.toLongOrNull()?.let { return it }
            return text.toDouble()
        }

        private fun Char.isAsciiDigit() = this in '0'..'9'
    }

    private class Writer(private val out: StringBuilder, private val indent: Int) {
        fun value(v: Any?, level: Int) {
            when (v) {
                null -> out.append("null")
                is Boolean -> out.append(v)
                is Int, is Long, is Short, is Byte -> out.append(v)
                is Float -> finite(v.toDouble()).also { out.append(v.toString()) }
                is Double -> out.append(finite(v).toString())
                is Number -> out.append(finite(v.toDouble()).toString())
                is String -> string(v)
                is Map<*, *> -> container('{', '}', v.entries.toList(), level) { e ->
                    string(e.key as? String ?: throw JsonException("object key ${e.key} is not a string"))
                    out.append(if (indent > 0) ": " else ":")
                    value(e.value, level + 1)
                }
                is Collection<*> -> container('[', ']', v.toList(), level) { value(it, level + 1) }
                is Array<*> -> container('[', ']', v.toList(), level) { value(it, level + 1) }
                is IntArray -> value(v.toList(), level)
                is LongArray -> value(v.toList(), level)
                is FloatArray -> value(v.toList(), level)
                is DoubleArray -> value(v.toList(), level)
                else -> throw JsonException("cannot write a ${v::class.simpleName} as JSON")
            }
        }

        private fun finite(d: Double): Double {
            if (d.isNaN() || d.isInfinite()) throw JsonException("$d has no JSON form")
            return d
        }

        private fun <T> container(open: Char, close: Char, items: List<T>, level: Int, item: (T) -> Unit) {
            out.append(open)
            if (items.isEmpty()) {
                out.append(close)
                return
            }
            items.forEachIndexed { k, it ->
                if (k > 0) out.append(',')
                newline(level + 1)
                item(it)
            }
            newline(level)
            out.append(close)
        }

        private fun newline(level: Int) {
            if (indent > 0) {
                out.append('\n')
                repeat(level * indent) { out.append(' ') }
            }
        }

        private fun string(v: String) {
            out.append('"')
            for (c in v) {
                when (c) {
                    '"' -> out.append("\\\"")
                    '\\' -> out.append("\\\\")
                    '\n' -> out.append("\\n")
                    '\r' -> out.append("\\r")
                    '\t' -> out.append("\\t")
                    '\b' -> out.append("\\b")
                    '\u000C' -> out.append("\\f")
                    else -> if (c < ' ') out.append("\\u%04x".format(c.code)) else out.append(c)
                }
            }
            out.append('"')
        }
    }
}

// ---------------------------------------------------------------- typed access to parsed JSON

/** A JSON object's field, with errors that name the field. */
@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.obj(key: String): Map<String, Any?> =
    this[key] as? Map<String, Any?> ?: throw JsonException("'$key' is not an object")

fun Map<String, Any?>.objOrNull(key: String): Map<String, Any?>? = if (this[key] == null) null else obj(key)

fun Map<String, Any?>.list(key: String): List<Any?> = this[key] as? List<Any?> ?: throw JsonException("'$key' is not an array")

fun Map<String, Any?>.str(key: String): String = this[key] as? String ?: throw JsonException("'$key' is not a string")

fun Map<String, Any?>.strOrNull(key: String): String? = this[key] as? String

fun Map<String, Any?>.long(key: String): Long = asLong(this[key]) ?: throw JsonException("'$key' is not an integer")

fun Map<String, Any?>.longOrNull(key: String): Long? = asLong(this[key])

fun Map<String, Any?>.int(key: String): Int = long(key).toInt()

fun Map<String, Any?>.intOrNull(key: String): Int? = longOrNull(key)?.toInt()

fun Map<String, Any?>.double(key: String): Double = (this[key] as? Number)?.toDouble() ?: throw JsonException("'$key' is not a number")

fun Map<String, Any?>.doubleOrNull(key: String): Double? = (this[key] as? Number)?.toDouble()

fun Map<String, Any?>.bool(key: String): Boolean = this[key] as? Boolean ?: throw JsonException("'$key' is not a boolean")

internal fun asLong(v: Any?): Long? = when (v) {
    is Long -> v
    is Int -> v.toLong()
    is Double -> if (v == Math.rint(v) && kotlin.math.abs(v) < 9.0e15) v.toLong() else null
    else -> null
}

@Suppress("UNCHECKED_CAST")
fun asObject(v: Any?, what: String): Map<String, Any?> = v as? Map<String, Any?> ?: throw JsonException("$what is not an object")
