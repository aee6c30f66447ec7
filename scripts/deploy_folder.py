"""Score a folder of images with an exported Rgi model (OpenVINO): overlays, ``verdicts.csv``, images per second.

    python scripts/deploy_folder.py --model results/.../weights/openvino/model.xml \
        --images datasets/rgi_textures/brick/test/hole --out results/deploy

Images are resized to the model's input size; an unreadable file is reported in the CSV and does not
stop the line; the output folder must be new or empty unless ``--overwrite`` is given. The work is
done by :func:`anomalib_rgi.deployment.deploy`.
"""

from anomalib_rgi.deployment import main

if __name__ == "__main__":
    main()
