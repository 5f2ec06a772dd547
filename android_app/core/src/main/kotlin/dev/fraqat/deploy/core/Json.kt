package dev.fraqat.deploy.core

import org.json.JSONException
import org.json.JSONObject
import org.json.JSONTokener
import java.math.BigInteger

/**
 * JSON through `org.json`: the framework's on Android, `org.json:json` from Maven Central on the JVM (tests, host
 * engine). Only API that Android's older `org.json` has is used (`compile-check.sh` compiles against android-all).
 *
 * Parsed values are plain Kotlin objects, so the protocol code reads them the same on both: `null`, [Boolean], [Long]
 * (integers that fit), [Double] (every other number), [String], [List] and [Map] (a [LinkedHashMap] in the
 * document's key order). `org.json`'s tokenizer reads the strings, numbers and literals; objects and arrays are walked
 * here, because the JVM library's `JSONObject` does not keep key order (Android's does) and the engine runs a
 * request's components in the order the CLI wrote them.
 *
 * Scalars are read as leniently as `org.json` reads them (an unquoted word is a string); the documents read here come
 * from Python's `json` module, and the protocol's schemas check every request's types.
 */
object Json {
    /** The JSON value [text] holds; a [JSONException] when it is not one value (or nests deeper than 512). */
    fun parse(text: String): Any? {
        val tokener = JSONTokener(text)
        val value = read(tokener, 0)
        if (tokener.nextClean() != '\u0000') throw tokener.syntaxError("unexpected text after the JSON value")
        return value
    }

    /**
     * [value] (maps, collections, arrays, strings, numbers, booleans, null) as JSON text, keys in the maps' order;
     * [indent] spaces per level, or one line when it is 0. Strings and numbers are written by `org.json`
     * (`JSONObject.quote`, `JSONObject.numberToString`: a whole double without its `.0`, a float in its own shortest
     * form); NaN and the infinities are refused. The containers are written here: `JSONStringer`'s methods return
     * another type on the JVM than on Android (a core compiled against one would not link against the other), and
     * the JVM's `JSONObject` does not keep key order.
     */
    fun write(value: Any?, indent: Int = 2): String = StringBuilder().also { write(it, value, indent, 0) }.toString()

    /** Equality with JSON semantics: 1 and 1.0 are equal, object key order does not matter. */
    fun equal(a: Any?, b: Any?): Boolean = when {
        a is Number && b is Number -> if (a is Long && b is Long) a == b else a.toDouble() == b.toDouble()
        a is Map<*, *> && b is Map<*, *> -> a.size == b.size && a.all { (k, v) -> b.containsKey(k) && equal(v, b[k]) }
        a is List<*> && b is List<*> -> a.size == b.size && a.indices.all { equal(a[it], b[it]) }
        else -> a == b
    }

    private fun read(t: JSONTokener, depth: Int): Any? {
        if (depth > 512) throw t.syntaxError("nesting deeper than 512")
        when (t.nextClean()) {
            '{' -> {
                val out = LinkedHashMap<String, Any?>()
                var c = t.nextClean()
                if (c == '}') return out
                while (true) {
                    if (c != '"') throw t.syntaxError("expected a string key")
                    val key = t.nextString('"')
                    if (t.nextClean() != ':') throw t.syntaxError("expected ':' after \"$key\"")
                    out[key] = read(t, depth + 1)
                    when (t.nextClean()) {
                        ',' -> c = t.nextClean()
                        '}' -> return out
                        else -> throw t.syntaxError("expected ',' or '}'")
                    }
                }
            }
            '[' -> {
                val out = ArrayList<Any?>()
                when (t.nextClean()) {
                    ']' -> return out
                    '\u0000' -> throw t.syntaxError("unterminated array")
                    else -> t.back()
                }
                while (true) {
                    out.add(read(t, depth + 1))
                    when (t.nextClean()) {
                        ',' -> continue
                        ']' -> return out
                        else -> throw t.syntaxError("expected ',' or ']'")
                    }
                }
            }
            '\u0000' -> throw t.syntaxError("expected a JSON value, found the end")
            else -> {
                t.back()
                return when (val v = t.nextValue()) {
                    JSONObject.NULL -> null
                    is Int, is Long, is Short, is Byte -> (v as Number).toLong()
                    is BigInteger -> if (v.bitLength() < 64) v.toLong() else v.toDouble()
                    is Number -> v.toDouble()
                    is String, is Boolean -> v
                    else -> throw t.syntaxError("unexpected ${v::class.java.simpleName} from the JSON reader")
                }
            }
        }
    }

    private fun write(out: StringBuilder, v: Any?, indent: Int, level: Int) {
        when (v) {
            null -> out.append("null")
            is String -> out.append(JSONObject.quote(v))
            is Boolean -> out.append(v)
            is Number -> out.append(JSONObject.numberToString(v))
            is Map<*, *> -> container(out, '{', '}', v.entries, indent, level) { (key, item) ->
                out.append(JSONObject.quote(key as? String ?: throw JSONException("object key $key is not a string")))
                out.append(if (indent > 0) ": " else ":")
                write(out, item, indent, level + 1)
            }
            is Iterable<*> -> container(out, '[', ']', v, indent, level) { write(out, it, indent, level + 1) }
            is Array<*> -> write(out, v.asList(), indent, level)
            is IntArray -> write(out, v.asList(), indent, level)
            is LongArray -> write(out, v.asList(), indent, level)
            is FloatArray -> write(out, v.asList(), indent, level)
            is DoubleArray -> write(out, v.asList(), indent, level)
            else -> throw JSONException("cannot write a ${v::class.java.simpleName} as JSON")
        }
    }

    private inline fun <T> container(out: StringBuilder, open: Char, close: Char, items: Iterable<T>, indent: Int, level: Int, item: (T) -> Unit) {
        out.append(open)
        var first = true
        for (it in items) {
            if (!first) out.append(',')
            first = false
            newline(out, indent, level + 1)
            item(it)
        }
        if (!first) newline(out, indent, level)
        out.append(close)
    }

    private fun newline(out: StringBuilder, indent: Int, level: Int) {
        if (indent > 0) out.append('\n').append(" ".repeat(indent * level))
    }
}

// ---------------------------------------------------------------- typed access to parsed JSON

/** A JSON object's field, with errors that name the field. */
@Suppress("UNCHECKED_CAST")
fun Map<String, Any?>.obj(key: String): Map<String, Any?> =
    this[key] as? Map<String, Any?> ?: throw JSONException("'$key' is not an object")

fun Map<String, Any?>.objOrNull(key: String): Map<String, Any?>? = if (this[key] == null) null else obj(key)

fun Map<String, Any?>.list(key: String): List<Any?> = this[key] as? List<Any?> ?: throw JSONException("'$key' is not an array")

fun Map<String, Any?>.str(key: String): String = this[key] as? String ?: throw JSONException("'$key' is not a string")

fun Map<String, Any?>.strOrNull(key: String): String? = this[key] as? String

fun Map<String, Any?>.long(key: String): Long = asLong(this[key]) ?: throw JSONException("'$key' is not an integer")

fun Map<String, Any?>.longOrNull(key: String): Long? = asLong(this[key])

fun Map<String, Any?>.int(key: String): Int = long(key).toInt()

fun Map<String, Any?>.intOrNull(key: String): Int? = longOrNull(key)?.toInt()

fun Map<String, Any?>.double(key: String): Double = (this[key] as? Number)?.toDouble() ?: throw JSONException("'$key' is not a number")

fun Map<String, Any?>.doubleOrNull(key: String): Double? = (this[key] as? Number)?.toDouble()

fun Map<String, Any?>.bool(key: String): Boolean = this[key] as? Boolean ?: throw JSONException("'$key' is not a boolean")

internal fun asLong(v: Any?): Long? = when (v) {
    is Long -> v
    is Int -> v.toLong()
    is Double -> if (v == Math.rint(v) && kotlin.math.abs(v) < 9.0e15) v.toLong() else null
    else -> null
}

@Suppress("UNCHECKED_CAST")
fun asObject(v: Any?, what: String): Map<String, Any?> = v as? Map<String, Any?> ?: throw JSONException("$what is not an object")
