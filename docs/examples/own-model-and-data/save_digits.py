"""scikit-learn's digits (1,797 8x8 images) saved as an .npz with the arrays subnets reads."""
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
np.savez("digits.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
print(x_train.shape, x_test.shape)
