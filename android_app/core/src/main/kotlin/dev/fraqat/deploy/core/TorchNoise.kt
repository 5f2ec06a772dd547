package dev.fraqat.deploy.core

import kotlin.math.cos
import kotlin.math.ln
import kotlin.math.sin
import kotlin.math.sqrt

/**
 * `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` on the CPU in float32 (the CLI's
 * `sampling_noise`), so the demo screen draws from a seed the same initial latents as the CLI: PyTorch's mt19937,
 * 24-bit uniforms, and the Box-Muller transform over blocks of 16 it uses for float tensors of 16 values or more
 * (the last block recomputed from fresh uniforms when the size is not a multiple of 16).
 */
object TorchNoise {
    fun randn(shape: IntArray, seed: Long): FloatTensor {
        val n = shape.fold(1) { a, b -> a * b }
        require(n >= 16) { "only tensors of 16 values or more follow PyTorch's vectorised normal sampling" }
        val mt = Mt19937(seed)
        val data = FloatArray(n) { mt.uniform24() }
        var i = 0
        while (i < n - 15) {
            boxMuller16(data, i)
            i += 16
        }
        if (n % 16 != 0) {
            val start = n - 16
            for (k in 0 until 16) data[start + k] = mt.uniform24()
            boxMuller16(data, start)
        }
        return FloatTensor(shape, data)
    }

    private fun boxMuller16(data: FloatArray, o: Int) {
        for (j in 0 until 8) {
            val u1 = 1f - data[o + j]
            val u2 = data[o + j + 8]
            val radius = sqrt(-2f * ln(u1))
            val theta = (2.0 * Math.PI * u2).toFloat()
            data[o + j] = radius * cos(theta)
            data[o + j + 8] = radius * sin(theta)
        }
    }

    /** The 32-bit Mersenne Twister (MT19937), seeded as PyTorch seeds it (the low 32 bits of the seed). */
    class Mt19937(seed: Long) {
        private val state = IntArray(624)
        private var index = 624

        init {
            state[0] = seed.toInt()
            for (j in 1 until 624) {
                val prev = state[j - 1]
                state[j] = 1812433253 * (prev xor (prev ushr 30)) + j
            }
        }

        fun next(): Int {
            if (index >= 624) twist()
            var y = state[index++]
            y = y xor (y ushr 11)
            y = y xor ((y shl 7) and 0x9d2c5680.toInt())
            y = y xor ((y shl 15) and 0xefc60000.toInt())
            return y xor (y ushr 18)
        }

        /** A float in [0, 1) from the low 24 bits of one draw (`at::uniform_real_distribution<float>`). */
        fun uniform24(): Float = (next() and 0xFFFFFF) * (1.0f / 16777216f)

        private fun twist() {
            for (k in 0 until 624) {
                val y = (state[k] and 0x80000000.toInt()) or (state[(k + 1) % 624] and 0x7fffffff)
                state[k] = state[(k + 397) % 624] xor (y ushr 1) xor (if (y and 1 != 0) 0x9908b0df.toInt() else 0)
            }
            index = 0
        }
    }
}
