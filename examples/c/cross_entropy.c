/* Cross-entropy from C through the fastloss C API: no Python anywhere.
 *
 * Reads "n c", then n*c logits and n class indices from standard input, and prints the loss
 * of each row and then the gradient, one row per line.  A bad class index is reported with
 * fastloss_strerror and exit status 2.
 *
 * Build and run (see README, "Use from C"):
 *   cc cross_entropy.c $(python -m fastloss config --cflags) \
 *      $(python -m fastloss config --libs) -o cross_entropy
 *   echo "2 3  0 1 2  1 1 1  2 0" | ./cross_entropy
 */
#include <fastloss.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    long long n, c;
    if (scanf("%lld %lld", &n, &c) != 2 || n < 0 || c < 1) {
        fprintf(stderr, "expected: n c, then n*c logits and n class indices\n");
        return 1;
    }
    float *logits = malloc(sizeof(float) * (size_t)(n * c));
    float *grad = malloc(sizeof(float) * (size_t)(n * c));
    float *loss = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    int64_t *target = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!logits || !grad || !loss || !target) return 1;
    for (long long i = 0; i < n * c; ++i)
        if (scanf("%f", &logits[i]) != 1) return 1;
    for (long long i = 0; i < n; ++i) {
        long long t;
        if (scanf("%lld", &t) != 1) return 1;
        target[i] = t;
    }

    int status = fastloss_cross_entropy_f32(n, c, logits, target, NULL, -100, 0.0f, loss, grad);
    if (status != FASTLOSS_OK) {
        fprintf(stderr, "fastloss: %s\n", fastloss_strerror(status));
        return 2;
    }
    for (long long i = 0; i < n; ++i) printf("%.9g\n", loss[i]);
    for (long long i = 0; i < n; ++i) {
        for (long long k = 0; k < c; ++k) printf(k ? " %.9g" : "%.9g", grad[i * c + k]);
        printf("\n");
    }
    free(logits), free(grad), free(loss), free(target);
    return 0;
}
