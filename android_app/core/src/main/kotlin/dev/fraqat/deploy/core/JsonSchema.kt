package dev.fraqat.deploy.core

/**
 * A JSON Schema (draft 2020-12) validator for the subset the protocol's schemas use: `type` (one or a list),
 * `required`, `properties`, `additionalProperties`, `enum`, `const`, `items`, `minimum`, `maximum`, `minItems`,
 * `maxItems`, `minProperties`, `minLength`, `maxLength`, `pattern`, `$ref` (JSON pointers into the same document,
 * e.g. `#/$defs/file`), `oneOf`, `anyOf` and `allOf`.
 *
 * A schema that uses any other assertion keyword is refused when the validator is built: a keyword silently
 * ignored would accept what the Python side (the `jsonschema` package) rejects.
 */
class SchemaError(val path: String, val message: String) {
    override fun toString() = "${path.ifEmpty { "(top)" }}: $message"
}

class JsonSchema(private val root: Map<String, Any?>) {
    private val patterns = HashMap<String, Regex>()

    init {
        check(root, "#")
    }

    /** Every violation, outermost first (an empty list: the instance is valid). */
    fun errors(instance: Any?): List<SchemaError> = ArrayList<SchemaError>().also { validate(root, instance, "", it) }

    fun isValid(instance: Any?): Boolean = errors(instance).isEmpty()

    private fun check(schema: Any?, where: String) {
        if (schema is Boolean) return
        val s = asObject(schema, "schema at $where")
        for ((key, value) in s) {
            when (key) {
                in ANNOTATIONS -> Unit
                "properties", "\$defs" -> asObject(value, "$where/$key").forEach { (k, v) -> check(v, "$where/$key/$k") }
                "additionalProperties", "items" -> check(value, "$where/$key")
                "oneOf", "anyOf", "allOf" -> (value as List<*>).forEachIndexed { k, v -> check(v, "$where/$key/$k") }
                in ASSERTIONS -> Unit
                else -> throw IllegalArgumentException("schema keyword '$key' at $where is not supported by this validator")
            }
        }
    }

    private fun resolve(ref: String): Any? {
        require(ref.startsWith("#")) { "only references inside the schema are supported, not $ref" }
        var node: Any? = root
        for (raw in ref.removePrefix("#").split('/').filter { it.isNotEmpty() }) {
            val part = raw.replace("~1", "/").replace("~0", "~")
            node = (node as? Map<*, *>)?.get(part) ?: throw IllegalArgumentException("unresolvable reference $ref")
        }
        return node
    }

    private fun validate(schema: Any?, v: Any?, path: String, out: MutableList<SchemaError>) {
        if (schema is Boolean) {
            if (!schema) out.add(SchemaError(path, "no value is allowed here"))
            return
        }
        val s = asObject(schema, "schema")
        (s["\$ref"] as? String)?.let { validate(resolve(it), v, path, out) }
        s["type"]?.let { type ->
            val types = if (type is List<*>) type.map { it as String } else listOf(type as String)
            if (types.none { hasType(v, it) }) {
                out.add(SchemaError(path, "${show(v)} is not of type ${types.joinToString(", ") { "'$it'" }}"))
                return
            }
        }
        s["const"]?.let { if (!Json.equal(it, v)) out.add(SchemaError(path, "${show(v)} was expected to be ${show(it)}")) }
        if (s.containsKey("const") && s["const"] == null && v != null) out.add(SchemaError(path, "${show(v)} was expected to be null"))
        (s["enum"] as? List<*>)?.let { options ->
            if (options.none { Json.equal(it, v) }) out.add(SchemaError(path, "${show(v)} is not one of ${show(options)}"))
        }
        if (v is Number) {
            (s["minimum"] as? Number)?.let { if (v.toDouble() < it.toDouble()) out.add(SchemaError(path, "$v is less than the minimum of $it")) }
            (s["maximum"] as? Number)?.let { if (v.toDouble() > it.toDouble()) out.add(SchemaError(path, "$v is greater than the maximum of $it")) }
        }
        if (v is String) {
            val length = v.codePointCount(0, v.length)
            asLong(s["minLength"])?.let { if (length < it) out.add(SchemaError(path, "${show(v)} is too short")) }
            asLong(s["maxLength"])?.let { if (length > it) out.add(SchemaError(path, "${show(v)} is too long")) }
            (s["pattern"] as? String)?.let { p ->
                if (patterns.getOrPut(p) { Regex(p) }.find(v) == null) out.add(SchemaError(path, "${show(v)} does not match '$p'"))
            }
        }
        if (v is List<*>) {
            asLong(s["minItems"])?.let { if (v.size < it) out.add(SchemaError(path, "${show(v)} should have at least $it items")) }
            asLong(s["maxItems"])?.let { if (v.size > it) out.add(SchemaError(path, "${show(v)} should have at most $it items")) }
            s["items"]?.let { items -> v.forEachIndexed { k, item -> validate(items, item, join(path, "$k"), out) } }
        }
        if (v is Map<*, *>) {
            asLong(s["minProperties"])?.let { if (v.size < it) out.add(SchemaError(path, "${show(v)} should have at least $it properties")) }
            (s["required"] as? List<*>)?.forEach { key ->
                if (!v.containsKey(key)) out.add(SchemaError(path, "'$key' is a required property"))
            }
            val properties = s["properties"] as? Map<*, *> ?: emptyMap<String, Any?>()
            for ((key, value) in v) {
                val name = key as String
                when {
                    properties.containsKey(name) -> validate(properties[name], value, join(path, name), out)
                    s.containsKey("additionalProperties") -> {
                        val extra = s["additionalProperties"]
                        if (extra == false) {
                            out.add(SchemaError(path, "additional properties are not allowed ('$name' was unexpected)"))
                        } else {
                            validate(extra, value, join(path, name), out)
                        }
                    }
                }
            }
        }
        (s["allOf"] as? List<*>)?.forEach { validate(it, v, path, out) }
        (s["anyOf"] as? List<*>)?.let { options ->
            if (options.none { option -> ArrayList<SchemaError>().also { validate(option, v, path, it) }.isEmpty() }) {
                out.add(SchemaError(path, "${show(v)} is not valid under any of the given schemas"))
            }
        }
        (s["oneOf"] as? List<*>)?.let { options ->
            val matching = options.count { option -> ArrayList<SchemaError>().also { validate(option, v, path, it) }.isEmpty() }
            if (matching == 0) out.add(SchemaError(path, "${show(v)} is not valid under any of the given schemas"))
            if (matching > 1) out.add(SchemaError(path, "${show(v)} is valid under more than one of the given schemas"))
        }
    }

    private fun join(path: String, part: String) = if (path.isEmpty()) part else "$path/$part"

    private fun show(v: Any?): String = Json.write(v, 0).let { if (it.length > 80) it.take(77) + "..." else it }

    companion object {
        private val ANNOTATIONS = setOf("\$schema", "\$id", "title", "description", "\$comment", "examples", "default")
        private val ASSERTIONS = setOf(
            "type", "required", "enum", "const", "minimum", "maximum", "minItems", "maxItems", "minProperties",
            "minLength", "maxLength", "pattern", "\$ref",
        )

        fun parse(text: String): JsonSchema = JsonSchema(asObject(Json.parse(text), "schema"))

        fun hasType(v: Any?, type: String): Boolean = when (type) {
            "null" -> v == null
            "boolean" -> v is Boolean
            "string" -> v is String
            "object" -> v is Map<*, *>
            "array" -> v is List<*>
            "number" -> v is Number
            "integer" -> v is Long || v is Int || (v is Double && v == Math.rint(v) && !v.isInfinite())
            else -> throw IllegalArgumentException("unknown JSON type '$type'")
        }
    }
}
