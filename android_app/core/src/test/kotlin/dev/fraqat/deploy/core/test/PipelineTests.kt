package dev.fraqat.deploy.core.test

import dev.fraqat.deploy.core.BenchError
import dev.fraqat.deploy.core.ComponentRunner
import dev.fraqat.deploy.core.FloatTensor
import dev.fraqat.deploy.core.GemmaDecoder
import dev.fraqat.deploy.core.GemmaSpec
import dev.fraqat.deploy.core.LongTensor
import dev.fraqat.deploy.core.PipelineSpec
import dev.fraqat.deploy.core.Png
import dev.fraqat.deploy.core.SanaPipeline
import dev.fraqat.deploy.core.Tensor
import dev.fraqat.deploy.core.Timed
import dev.fraqat.deploy.core.TorchNoise
import dev.fraqat.deploy.core.asObject
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.assertThrows
import java.io.ByteArrayInputStream
import javax.imageio.ImageIO

/** The toy components of `pipeline.json` (their definition is written there), in float32 as numpy computes them. */
object ToyModel : ComponentRunner {
    override fun run(component: String, feed: Map<String, Tensor>): Map<String, Tensor> = when (component) {
        "text_encoder" -> {
            val ids = feed.getValue("input_ids") as LongTensor
            val mask = feed.getValue("attention_mask") as LongTensor
            val length = ids.shape[1]
            val out = FloatArray(length * 4) { k ->
                val t = k / 4
                val d = k % 4
                (ids.data[t].toFloat() * 0.01f + d.toFloat() * 0.1f) * mask.data[t].toFloat()
            }
            mapOf("prompt_embeds" to FloatTensor(intArrayOf(1, length, 4), out))
        }
        "transformer" -> {
            val latent = feed.getValue("latent") as FloatTensor
            val features = feed.getValue("timestep_features") as FloatTensor
            val embeds = feed.getValue("prompt_embeds") as FloatTensor
            val mask = feed.getValue("prompt_mask") as LongTensor
            val batch = latent.shape[0]
            val per = latent.size / batch
            val channels = features.shape[1]
            val tokens = embeds.shape[1]
            val width = embeds.shape[2]
            val out = FloatArray(latent.size)
            for (b in 0 until batch) {
                var mean = 0f
                for (k in 0 until channels) mean += features.data[b * channels + k]
                mean /= channels
                var text = 0f
                for (t in 0 until tokens) for (d in 0 until width) {
                    text += embeds.data[(b * tokens + t) * width + d] * mask.data[b * tokens + t].toFloat()
                }
                val shift = mean - 0.01f * text
                for (k in 0 until per) out[b * per + k] = 0.5f * latent.data[b * per + k] - shift
            }
            mapOf("velocity" to FloatTensor(latent.shape, out))
        }
        "vae_decoder" -> {
            val latent = feed.getValue("latent") as FloatTensor
            val plane = latent.shape[2] * latent.shape[3]
            mapOf("image" to FloatTensor(intArrayOf(1, 3, latent.shape[2], latent.shape[3]), FloatArray(3 * plane) { 0.5f + 0.25f * latent.data[it] }))
        }
        else -> throw IllegalArgumentException("no toy component $component")
    }
}

fun pipelineTests(s: Suite) {
    s.test("pipeline: tokenizer + noise + Sana loop reproduce pipeline.json's toy generation") { sanaGolden(null) }
    // a transformer exported with --guidance-batch 1 takes one half of the guidance batch per call; the toy
    // transformer computes every row alone, so the image is the same and the transformer runs twice per step
    s.test("pipeline: a one-row transformer graph is called per half of the guidance batch, same image") { sanaGolden(1) }
    s.test("pipeline: a transformer_batch that does not divide the guidance batch is refused") {
        val error = assertThrows<BenchError>("transformer_batch 3") { sanaGolden(3) }
        assertTrue(error.message!!.contains("does not divide"), error.message!!)
    }

    s.test("png: the encoder writes what a PNG decoder reads back, rounded as numpy rounds") {
        val image = FloatTensor(intArrayOf(3, 2, 3), floatArrayOf(0f, 0.5f, 1f, -1f, 2f, 0.25f, 0.1f, 0.2f, 0.3f, 0.4f, 0.6f, 0.7f, 0.9f, 0.8f, 0.002f, 0.998f, 0.5f, 0.5f))
        val png = Png.encode(image)
        keep("png_check.png", png)
        val decoded = ImageIO.read(ByteArrayInputStream(png))
        assertEquals(3, decoded.width, "width")
        assertEquals(2, decoded.height, "height")
        val argb = Png.argb(image)
        for (y in 0 until 2) for (x in 0 until 3) assertEquals(argb[y * 3 + x], decoded.getRGB(x, y), "pixel $x,$y")
        // 0.5 * 255 = 127.5 rounds to the even 128; 0.002 * 255 = 0.51 rounds to 1
        assertEquals(128, (argb[1] shr 16) and 0xFF, "half to even")
        assertEquals(1, argb[2] and 0xFF, "blue of pixel (2, 0)")
    }
}

/** The toy prefill/decode graphs of `gemma.json` (their definition is written there). */
class ToyGemma(private val spec: GemmaSpec, private val vocab: Int) : ComponentRunner {
    override fun run(component: String, feed: Map<String, Tensor>): Map<String, Tensor> {
        val ids = (feed.getValue("input_ids") as LongTensor).data
        val positions = (feed.getValue("position_ids") as LongTensor).data
        var s = 0L
        if (component == "decode") {
            val mask = (feed.getValue("attention_mask") as LongTensor).data
            val keys = (feed.getValue("past_key_0") as FloatTensor).data
            var sum = 0f
            for (j in mask.indices) sum += mask[j] * keys[j * spec.headDim]
            s = Math.round(sum).toLong() + 2 * ((feed["sliding_mask"] as LongTensor?)?.data?.sum() ?: 0L)
        }
        val n = ids.size
        val logits = FloatArray(n * vocab) { k -> -kotlin.math.abs(((3 * ids[k / vocab] + 1 + s) % vocab - k % vocab).toFloat()) }
        val out = linkedMapOf<String, Tensor>("logits" to FloatTensor(intArrayOf(1, n, vocab), logits))
        for (i in 0 until spec.layers) {
            out["key_$i"] = FloatTensor(intArrayOf(1, 1, n, 2), FloatArray(2 * n) { k -> if (k % 2 == 0) (ids[k / 2] + i).toFloat() else positions[k / 2].toFloat() })
            out["value_$i"] = FloatTensor(intArrayOf(1, 1, n, 2), FloatArray(2 * n) { k -> if (k % 2 == 0) 0.5f * ids[k / 2] else i.toFloat() })
        }
        return out
    }
}

fun gemmaTests(s: Suite) {
    s.test("gemma: greedy decoding reproduces gemma.json (Python's greedy_decode on the same toy graphs)") {
        val golden = example("gemma")
        val specJson = asObject(golden["spec"], "spec")
        val spec = GemmaSpec.fromJson(specJson)
        assertEquals(GemmaSpec(10, 4, 2, 1, 2, 3, 0), spec, "spec read from pipeline.spec")
        val model = ToyGemma(spec, (specJson["vocab"] as Number).toInt())
        for (case in golden["cases"] as List<*>) {
            val c = asObject(case, "case")
            val prompt = (c["prompt"] as List<*>).map { (it as Number).toLong() }
            val eos = (c["eos_token_id"] as Number?)?.toLong()
            val tokens = GemmaDecoder.greedy(model, spec, prompt, (c["max_new_tokens"] as Number).toInt(), eos, Timed())
            assertEquals((c["tokens"] as List<*>).map { (it as Number).toLong() }, tokens, "continuation of $prompt")
        }
    }
}

/** pipeline.json's toy generation, with the transformer called in [rows]-row pieces (null: the whole batch). */
private fun Context.sanaGolden(rows: Int?) {
    val golden = example("pipeline")
    val spec = PipelineSpec(asObject(golden["pipeline"], "pipeline"))
    val pipeline = if (rows == null) spec else spec.with("transformer_batch" to rows.toLong())
    val prompt = golden["prompt"] as String
    val seed = (golden["seed"] as Number).toLong()
    val tokenizer = captionTokenizer()
    val cond = tokenizer.encode(prompt, 16)
    val uncond = tokenizer.encode("", 16)
    val latent = intArrayOf(1) + pipeline.latentShape!!.toIntArray()
    val tensors = mapOf(
        "input_ids" to cond.idsTensor(), "attention_mask" to cond.maskTensor(), "uncond_input_ids" to uncond.idsTensor(),
        "uncond_attention_mask" to uncond.maskTensor(), "noise" to TorchNoise.randn(latent, seed),
    )
    val timed = Timed()
    val image = SanaPipeline.generate(ToyModel, pipeline, tensors, timed)
    assertEquals((golden["image_shape"] as List<*>).map { (it as Number).toInt() }, image.shape.toList(), "image shape")
    assertAllClose(doubles(golden["image"]), image.data.map { it.toDouble() }, 2e-5, "image")
    val calls = asObject(golden["calls"], "calls").mapValues { (it.value as Number).toInt() * (if (it.key == "transformer" && rows == 1) 2 else 1) }
    assertEquals(calls, timed.calls.mapValues { it.value.size }, "component calls")
}
