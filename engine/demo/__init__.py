"""The pali-demo-shapes task: a synthetic dataset, the script that trains the bundled demo model on
it, and the script that measures that model on a held-out seed.

    python -m engine.demo.shapes --out demo_images --count 4   # sample images + their truth
    python -m engine.demo.train_demo                           # retrain engine/demo_model/
    python -m engine.demo.evaluate                             # held-out caption/VQA/detection scores
"""
