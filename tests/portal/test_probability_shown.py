"""A probability is shown on the side of the threshold its label is on: rounded alone,
one just below the threshold read as the threshold itself."""

from __future__ import annotations

import pytest
from django.urls import reverse

from diagnostics.models import Prediction
from diagnostics.percent import probability_and_threshold

SHIPPED_THRESHOLD = 0.9200189097249897  # mlcore/weights/pleura-resnet18-v1/model.json


@pytest.mark.parametrize(
    ("probability", "threshold", "places", "shown"),
    [
        (0.479, 0.5, 1, ("47.9", "50.0")),
        (0.91996, SHIPPED_THRESHOLD, 1, ("91.996", "92.002")),  # 92.0 against 92.0 otherwise
        (0.9151, SHIPPED_THRESHOLD, 0, ("91.5", "92.0")),  # the worklist's 92% against 92%
        (SHIPPED_THRESHOLD - 2e-8, SHIPPED_THRESHOLD, 1, ("<92.002", "92.002")),  # README's validation image
        (SHIPPED_THRESHOLD, SHIPPED_THRESHOLD, 1, ("92.0", "92.0")),  # at the threshold: pneumonia
        (0.9996, SHIPPED_THRESHOLD, 1, (">99.9", "92.0")),
        (0.00004, 0.5, 1, ("<0.1", "50.0")),
        (1.0, 0.5, 0, ("100", "50")),
        # A threshold near 1 never reads 100 (diff review).
        (0.997, 0.996, 0, (">99", ">99")),
        (0.5, 0.996, 0, ("50", ">99")),
    ],
)
def test_a_probability_reads_on_its_labels_side_of_the_threshold(probability, threshold, places, shown):
    assert probability_and_threshold(probability, threshold, places) == shown


def test_the_study_page_and_the_worklist_show_a_study_just_below_the_threshold_below_it(
    client_for, doctor, make_study, hospital_a
):
    study = make_study(hospital_a, label="normal", probability=0.91996)
    Prediction.objects.filter(study=study).update(threshold=SHIPPED_THRESHOLD)
    client = client_for(doctor)

    page = client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()
    worklist = client.get(reverse("diagnostics:worklist")).content.decode()

    assert "Probability of pneumonia <strong>91.996%</strong>, below the model's decision threshold of 92.002%." in page
    assert 'style="width: 92.0%"' in page  # the bar: the probability itself
    assert '<span class="result result--normal">Normal</span>' in worklist
    # Whole percents, or as many places as tell it from the threshold (two at most).
    # Named in the cell: "Normal 92%" read as 92% sure it is normal (UX review).
    assert (
        '<span class="prob"><span class="prob__value">pneumonia &lt;92.00%</span> '
        '<span class="prob__threshold">· threshold 92.00%</span>'
    ) in worklist
