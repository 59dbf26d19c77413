/* Cross-entropy from C through the fastloss C API: no Python anywhere.
 *
 * Usage: cross_entropy [label_smoothing [z_loss]]
 * Reads "n c", then n*c logits and n class indices from standard input, and prints the loss
 * of each row and then the gradient, one row per line.  Rows with class index -100 are
 * ignored.  An error (a bad class index, a label smoothing outside [0, 1], ...) is reported
 * with fastloss_strerror and exit status 2.
 *
 * Build and run (see README, "Use from C"):
 *   cc cross_entropy.c $(python -m fastloss config --cflags) \
 *      $(python -m fastloss config --libs) -o cross_entropy
 *   echo "2 3  0 1 2  1 1 1  2 0" | ./cross_entropy 0.1 1e-4
 */
#include <fastloss.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    /* The options: the defaults first (this also sets opts.size, which lets a newer library
       know which options this program was built with), then what we change. */
    fastloss_cross_entropy_options opts;
    fastloss_cross_entropy_options_init(&opts);
    if (argc > 1) opts.label_smoothing = atof(argv[1]);
    if (argc > 2) opts.z_loss = atof(argv[2]);

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

    int status = fastloss_cross_entropy_f32(n, c, logits, target, &opts, loss, grad);
    if (status != FASTLOSS_OK) {
        fprintf(stderr, "fastloss %s: %s\n", fastloss_version(), fastloss_strerror(status));
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
